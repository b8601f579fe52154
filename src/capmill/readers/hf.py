"""A Hugging Face dataset through `datasets`: a hub id, a `save_to_disk` folder, or a local
folder of data files in hub layout (`data/train-00000-of-00004.parquet`, ...).

What one shard is depends on how the dataset is read, and is stable across runs so resume works:
- streamed (`streaming: true`, hub ids and data-file folders): one data file of the split, in the
  order `datasets` lists them; keys `SPLIT_FILE_ROW` (row within the file);
- memory-mapped (a `save_to_disk` folder, or `streaming: false`): `rows_per_shard` rows; keys
  `SPLIT_ROW` (row within the split).
A `key_column` replaces the generated keys. Pin `revision` for a hub dataset so its file list
cannot change under a resumed run.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field

from capmill import keys
from capmill.errors import ConfigError, SetupError
from capmill.keys import Key
from capmill.readers.base import InputConfig, Reader, Shard
from capmill.readers.locate import LocationConfig, Locator, with_downloads
from capmill.readers.parquet import check_columns, image_value
from capmill.sample import Sample

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HfInput(InputConfig, LocationConfig):
    type: Literal["hf"] = "hf"
    # OWNER/NAME on the hub, or a local folder (save_to_disk output, or data files in hub layout).
    path: str
    # The dataset's configuration (subset), when it has several.
    name: str | None = None
    split: str = "train"
    revision: str | None = None
    # Stream the data files (one shard per file) instead of downloading and preparing the
    # dataset first. A save_to_disk folder is always memory-mapped.
    streaming: bool = True
    # Image (or Audio) feature, bytes, or a path/URL string (paths are confined like a manifest's).
    image_column: str | None = "image"
    alt_text_column: str | None = "caption"
    # Unique key column; when None, keys are generated (see the module docstring).
    key_column: str | None = None
    # Rows per shard of a memory-mapped dataset.
    rows_per_shard: int = Field(10_000, ge=1)
    # Where `datasets` prepares a dataset read with streaming: false (default: its own cache).
    cache_dir: str | None = None

    def provides(self) -> frozenset[Key]:
        fields = {keys.ALT_TEXT, keys.IMAGE, keys.AUDIO}
        if self.alt_text_column is None:
            fields.discard(keys.ALT_TEXT)
        if self.image_column is None:
            fields -= {keys.IMAGE, keys.AUDIO}
        return frozenset(fields)

    def build(self) -> HfReader:
        return HfReader(self)


class HfReader(Reader):
    config: HfInput

    def __init__(self, config: HfInput):
        super().__init__(config)
        self._lock = threading.Lock()
        self._dataset: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # Workers load the dataset themselves; a live dataset and a lock do not travel.
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])

    # -- loading ---------------------------------------------------------------------------

    def _local(self) -> bool:
        return os.path.isdir(self.config.path)

    def _saved(self) -> bool:
        return self._local() and os.path.exists(os.path.join(self.config.path, "dataset_info.json")) \
            and (os.path.exists(os.path.join(self.config.path, "state.json"))
                 or os.path.exists(os.path.join(self.config.path, "dataset_dict.json")))

    def dataset(self) -> Any:
        """The split, loaded once per reader (a Dataset, or an IterableDataset when streamed)."""
        with self._lock:
            if self._dataset is None:
                self._dataset = self._load()
            return self._dataset

    def _load(self) -> Any:
        cfg = self.config
        try:
            import datasets
        except ImportError:
            raise SetupError("input type hf needs the `datasets` package: pip install 'capmill[hf]'") from None
        if not self._local() and not _HUB_ID.match(cfg.path):
            raise ConfigError(f"input.path {cfg.path!r}: no such folder, and not a hub id OWNER/NAME")
        try:
            if self._saved():
                loaded = datasets.load_from_disk(cfg.path)
            else:
                loaded = datasets.load_dataset(cfg.path, cfg.name, split=cfg.split, revision=cfg.revision,
                                               streaming=cfg.streaming, cache_dir=cfg.cache_dir,
                                               storage_options=cfg.storage_options or None)
        except (ConfigError, SetupError):
            raise
        except FileNotFoundError as e:
            raise ConfigError(f"input.path {cfg.path!r}: {e}") from None
        except Exception as e:  # the hub's client raises many types: offline, gated, not found
            where = "folder" if self._local() else "hub dataset"
            raise SetupError(
                f"could not load the {where} {cfg.path!r} (split {cfg.split!r}): {type(e).__name__}: {e}. "
                "Without network, download it first (hf download --repo-type dataset OWNER/NAME --local-dir DIR) "
                "and set input.path to DIR") from None
        if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            if cfg.split not in loaded:
                raise ConfigError(f"input.split {cfg.split!r} is not in {cfg.path!r}; its splits are: "
                                  f"{', '.join(loaded)}")
            loaded = loaded[cfg.split]
        features = getattr(loaded, "features", None)
        if cfg.image_column and features is not None and isinstance(features.get(cfg.image_column), datasets.Image):
            # Undecoded: the bytes (or path) as stored; decoding is the run's own hygiene step.
            loaded = loaded.cast_column(cfg.image_column, datasets.Image(decode=False))
        elif cfg.image_column and features is not None and isinstance(features.get(cfg.image_column), datasets.Audio):
            # An Audio column likewise: its file bytes (or path), decoded by the run's audio step.
            loaded = loaded.cast_column(cfg.image_column, datasets.Audio(decode=False))
        return loaded

    def _streamed(self, dataset: Any) -> bool:
        import datasets

        return isinstance(dataset, datasets.IterableDataset)

    def _split_name(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.config.split)

    # -- the Reader protocol ---------------------------------------------------------------

    def check(self) -> None:
        """The configured columns against the dataset's features (or its first row)."""
        dataset = self.dataset()
        features = getattr(dataset, "features", None)
        if features is not None:
            names = list(features)
        else:
            first = next(iter(dataset.take(1)), None)
            if first is None:
                return
            names = list(first)
        cfg = self.config
        check_columns(names, f"{cfg.path} ({cfg.split})", image_column=cfg.image_column, image_path_column=None,
                      alt_text_column=cfg.alt_text_column, key_column=cfg.key_column,
                      explicit=cfg.model_fields_set)

    def shards(self) -> list[Shard]:
        dataset = self.dataset()
        split = self._split_name()
        if self._streamed(dataset):
            return [Shard(f"{split}_{i:05d}", f"{self.config.path} ({self.config.split}, file {i})", i,
                          spec=("file", i, dataset.n_shards)) for i in range(dataset.n_shards)]
        size = self.config.rows_per_shard
        return [Shard(f"{split}_{j:05d}", f"{self.config.path} ({self.config.split}, rows {start}..)", j,
                      spec=("rows", start, min(start + size, len(dataset))))
                for j, start in enumerate(range(0, len(dataset), size))]

    def read_shard(self, shard: Shard) -> Iterator[Sample]:
        yield from with_downloads(self._rows(shard), self.config.fetch)

    def _rows(self, shard: Shard) -> Iterator[Sample]:
        dataset = self.dataset()
        kind, a, b = shard.spec
        split = self._split_name()
        locator = self._locator()
        if kind == "file":
            if dataset.n_shards != b:
                raise ConfigError(f"{self.config.path}: the split has {dataset.n_shards} files now, {b} when the "
                                  "run was planned; pin input.revision so it cannot change")
            for row, record in enumerate(dataset.shard(num_shards=b, index=a, contiguous=True)):
                yield self._sample(dict(record), f"{split}_{a:05d}_{row:08d}", locator)
            return
        row = a
        for batch in dataset.select(range(a, b)).iter(batch_size=256):
            columns = list(batch)
            for i in range(len(batch[columns[0]]) if columns else 0):
                yield self._sample({c: batch[c][i] for c in columns}, f"{split}_{row:08d}", locator)
                row += 1

    def _locator(self) -> Locator:
        # Paths resolve in the dataset's folder (or repository), unless input.root says otherwise.
        root = self.config.path if self._local() else f"hf://datasets/{self.config.path}"
        return Locator.for_file(f"{root}/.", self.config)

    def _sample(self, record: dict[str, Any], generated_key: str, locator: Locator) -> Sample:
        cfg = self.config
        key = record.get(cfg.key_column) if cfg.key_column else None
        value = record.pop(cfg.image_column, None) if cfg.image_column else None
        alt = record.get(cfg.alt_text_column) if cfg.alt_text_column else None
        meta = {k: v for k, v in record.items() if isinstance(v, (str, int, float, bool)) or v is None}
        sample = Sample(key=str(key) if key is not None else generated_key,
                        alt_text=None if alt is None else str(alt), meta=meta)
        image_value(sample, value, locator)
        return sample
