"""Parquet tables with one row per sample; a file, or a range of its row groups, is one shard."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field

from capmill.readers.base import InputConfig, Reader, Shard, expand_paths, shard_stem, unique_shard_names
from capmill.sample import ImageRef, Sample


class ParquetInput(InputConfig):
    type: Literal["parquet"] = "parquet"
    path: str | list[str]
    # The image as encoded bytes (a binary column, or a struct with a `bytes` field as Hugging
    # Face datasets store images) ...
    image_column: str | None = "image"
    # ... or as a path, relative to the parquet file unless absolute or a URL.
    image_path_column: str | None = None
    alt_text_column: str | None = "caption"
    # Unique key column; when absent, keys are "<file stem>_<row number>".
    key_column: str | None = "key"
    # Split each file into shards of this many row groups (None: one shard per file).
    row_groups_per_shard: int | None = Field(None, ge=1)

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

    def read_shard(self, shard: Shard) -> Iterator[Sample]:
        import fsspec
        import pyarrow.parquet as pq

        cfg = self.config
        with fsspec.open(shard.source, "rb", **cfg.storage_options) as f:
            pf = pq.ParquetFile(f)
            groups = shard.spec if shard.spec is not None else list(range(pf.num_row_groups))
            # Row numbers count from the start of the file so generated keys do not depend on sharding.
            row = sum(pf.metadata.row_group(g).num_rows for g in range(groups[0])) if groups else 0
            for g in groups:
                for batch in pf.iter_batches(row_groups=[g], batch_size=1024):
                    for record in batch.to_pylist():
                        yield self._sample(record, row, shard)
                        row += 1

    def _sample(self, record: dict[str, Any], row: int, shard: Shard) -> Sample:
        cfg = self.config
        key = record.get(cfg.key_column) if cfg.key_column else None
        key = str(key) if key is not None else f"{shard_stem(shard.source)}_{row:08d}"
        image = ImageRef()
        value = record.pop(cfg.image_column, None) if cfg.image_column else None
        if isinstance(value, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            image = ImageRef(data=bytes(value))
        elif isinstance(value, str):
            image = self._ref(value, shard)
        if cfg.image_path_column and record.get(cfg.image_path_column):
            image = self._ref(str(record[cfg.image_path_column]), shard)
        alt = record.get(cfg.alt_text_column) if cfg.alt_text_column else None
        meta = {k: v for k, v in record.items() if isinstance(v, (str, int, float, bool)) or v is None}
        return Sample(key=key, image=image, alt_text=None if alt is None else str(alt), meta=meta)

    def _ref(self, location: str, shard: Shard) -> ImageRef:
        ext = posixpath.splitext(location)[1].lstrip(".").lower() or None
        if "://" in location or posixpath.isabs(location):
            return ImageRef(path=location, ext=ext)
        return ImageRef(path=posixpath.join(posixpath.dirname(shard.source), location), ext=ext)
