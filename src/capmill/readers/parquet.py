"""Parquet tables with one row per sample; a file, or a range of its row groups, is one shard."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field

from capmill import keys
from capmill.errors import ConfigError, InputRefused
from capmill.keys import Key
from capmill.media.kinds import sniff
from capmill.readers.base import InputConfig, Reader, Shard, expand_paths, shard_stem, unique_shard_names
from capmill.readers.locate import LocationConfig, Locator, with_downloads
from capmill.sample import IMAGE, READ_ERROR, ImageRef, Sample


class ParquetInput(InputConfig, LocationConfig):
    type: Literal["parquet"] = "parquet"
    path: str | list[str]
    # The image (or video, or audio) as encoded bytes (a binary column, or a struct with a
    # `bytes` field as Hugging Face datasets store images and audio) ...
    image_column: str | None = "image"
    # ... or as a path, relative to the parquet file's folder (see `root`), or an http(s) URL.
    image_path_column: str | None = None
    alt_text_column: str | None = "caption"
    # Unique key column; when absent, keys are "<file stem>_<row number>".
    key_column: str | None = "key"
    # Split each file into shards of this many row groups (None: one shard per file).
    row_groups_per_shard: int | None = Field(None, ge=1)

    def provides(self) -> frozenset[Key]:
        fields = {keys.ALT_TEXT, keys.IMAGE, keys.VIDEO, keys.AUDIO}
        if self.alt_text_column is None:
            fields.discard(keys.ALT_TEXT)
        if self.image_column is None and self.image_path_column is None:
            fields -= {keys.IMAGE, keys.VIDEO, keys.AUDIO}
        return frozenset(fields)

    def build(self) -> ParquetReader:
        return ParquetReader(self)


class ParquetReader(Reader):
    config: ParquetInput

    def shards(self) -> list[Shard]:
        import pyarrow.parquet as pq

        paths = expand_paths(self.config.path, self.config.storage_options)
        step = self.config.row_groups_per_shard
        shards: list[Shard] = []
        for path in paths:
            if step is None:
                shards.append(Shard(shard_stem(path), path, len(shards), spec=None))
                continue
            import fsspec

            with fsspec.open(path, "rb", **self.config.storage_options) as f:
                n_groups = pq.ParquetFile(f).num_row_groups
            for j, start in enumerate(range(0, max(n_groups, 1), step)):
                groups = list(range(start, min(start + step, n_groups)))
                shards.append(Shard(f"{shard_stem(path)}_{j:04d}", path, len(shards), spec=groups))
        return unique_shard_names(shards)

    def check(self) -> None:
        """The configured columns against the first file's schema (see Reader.check)."""
        import fsspec
        import pyarrow.parquet as pq

        cfg = self.config
        first = expand_paths(cfg.path, cfg.storage_options)[0]
        with fsspec.open(first, "rb", **cfg.storage_options) as f:
            names = list(pq.ParquetFile(f).schema_arrow.names)
        check_columns(names, first, image_column=cfg.image_column, image_path_column=cfg.image_path_column,
                      alt_text_column=cfg.alt_text_column, key_column=cfg.key_column,
                      explicit=cfg.model_fields_set)

    def read_shard(self, shard: Shard) -> Iterator[Sample]:
        yield from with_downloads(self._rows(shard), self.config.fetch)

    def _rows(self, shard: Shard) -> Iterator[Sample]:
        import fsspec
        import pyarrow.parquet as pq

        cfg = self.config
        locator = Locator.for_file(shard.source, cfg)
        with fsspec.open(shard.source, "rb", **cfg.storage_options) as f:
            pf = pq.ParquetFile(f)
            groups = shard.spec if shard.spec is not None else list(range(pf.num_row_groups))
            # Row numbers count from the start of the file so generated keys do not depend on sharding.
            row = sum(pf.metadata.row_group(g).num_rows for g in range(groups[0])) if groups else 0
            for g in groups:
                for batch in pf.iter_batches(row_groups=[g], batch_size=1024):
                    for record in batch.to_pylist():
                        yield self._sample(record, row, shard, locator)
                        row += 1

    def _sample(self, record: dict[str, Any], row: int, shard: Shard, locator: Locator) -> Sample:
        cfg = self.config
        key = record.get(cfg.key_column) if cfg.key_column else None
        key = str(key) if key is not None else f"{shard_stem(shard.source)}_{row:08d}"
        value = record.pop(cfg.image_column, None) if cfg.image_column else None
        if cfg.image_path_column and record.get(cfg.image_path_column):
            value = str(record[cfg.image_path_column])
        alt = record.get(cfg.alt_text_column) if cfg.alt_text_column else None
        meta = {k: v for k, v in record.items() if isinstance(v, (str, int, float, bool)) or v is None}
        sample = Sample(key=key, alt_text=None if alt is None else str(alt), meta=meta)
        image_value(sample, value, locator)
        return sample


def image_value(sample: Sample, value: Any, locator: Locator) -> None:
    """Set `sample.image` from a cell: bytes, a Hugging Face image struct `{bytes, path}`, or a
    location (confined by `locator`; a refused one fails the sample with the reason)."""
    if isinstance(value, dict):  # Hugging Face datasets' Image and Audio features: {"bytes": ..., "path": ...}
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        kind, ext = sniff(bytes(value))
        sample.image = ImageRef(data=bytes(value), ext=ext if kind not in (None, IMAGE) else None, kind=kind or IMAGE)
    elif isinstance(value, str) and value:
        try:
            sample.image = locator.locate(value)
        except InputRefused as e:
            sample.meta["refused_location"] = value[:500]
            sample.fail(READ_ERROR, e.reason)


def check_columns(names: list[str], source: str, *, image_column: str | None, image_path_column: str | None,
                  alt_text_column: str | None, key_column: str | None, explicit: set[str]) -> None:
    """A configured column that `names` lacks is a ConfigError listing the columns there are.

    The key column may be missing unless it was set explicitly (keys are then generated); the
    image must come from one of the image columns."""
    have = set(names)
    listing = ", ".join(names) or "(none)"

    def missing(option: str, column: str, hint: str = "") -> ConfigError:
        return ConfigError(f"input.{option}: column {column!r} is not in {source}; its columns are: {listing}. "
                           f"Set input.{option} to one of them{hint}")

    if image_path_column is not None and image_path_column not in have:
        raise missing("image_path_column", image_path_column)
    if image_column is not None and image_column not in have and (image_path_column is None or "image_column" in explicit):
        raise missing("image_column", image_column, " (or set image_path_column for a column of paths or URLs)")
    if image_column is None and image_path_column is None:
        raise ConfigError("input: set image_column (image bytes) or image_path_column (paths or URLs); "
                          f"the columns of {source} are: {listing}")
    if alt_text_column is not None and alt_text_column not in have:
        raise missing("alt_text_column", alt_text_column, " (or null when the data has no AltText)")
    if key_column is not None and key_column not in have and "key_column" in explicit:
        raise missing("key_column", key_column, " (or null to number the rows)")
