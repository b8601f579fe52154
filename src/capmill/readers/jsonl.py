"""A JSON-lines manifest: one `{key?, image_path, alt_text, ...}` object per line."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from capmill.readers.base import InputConfig, Reader, Shard, expand_paths, shard_stem
from capmill.sample import READ_ERROR, ImageRef, Sample


class JsonlInput(InputConfig):
    type: Literal["jsonl"] = "jsonl"
    path: str | list[str]
    image_field: str = "image_path"
    alt_text_field: str = "alt_text"
    # Lines per virtual shard.
    shard_size: int = Field(1000, ge=1)

    def build(self) -> JsonlReader:
        return JsonlReader(self)


class JsonlReader(Reader):
    config: JsonlInput

    def shards(self) -> list[Shard]:
        import fsspec

        shards: list[Shard] = []
        for path in expand_paths(self.config.path, self.config.storage_options):
            with fsspec.open(path, "rb", **self.config.storage_options) as f:
                n_lines = sum(1 for _ in f)
            size = self.config.shard_size
            for j, start in enumerate(range(0, n_lines, size)):
                shards.append(Shard(f"{shard_stem(path)}_{j:05d}", path, len(shards), spec=(start, start + size)))
        return shards

    def read_shard(self, shard: Shard) -> Iterator[Sample]:
        import fsspec

        start, stop = shard.spec
        base = posixpath.dirname(shard.source)
        with fsspec.open(shard.source, "rb", **self.config.storage_options) as f:
            for lineno, line in enumerate(f):
                if lineno < start:
                    continue
                if lineno >= stop:
                    break
                yield self._sample(line, lineno, base, shard)

    def _sample(self, line: bytes, lineno: int, base: str, shard: Shard) -> Sample:
        fallback_key = f"{shard_stem(shard.source)}_{lineno:08d}"
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("line is not a JSON object")
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return Sample(key=fallback_key, status=READ_ERROR, error=f"line {lineno + 1}: {e}")
        location = record.pop(self.config.image_field, None)
        image = ImageRef()
        if isinstance(location, str) and location:
            if "://" not in location and not posixpath.isabs(location):
                location = posixpath.join(base, location)
            image = ImageRef(path=location, ext=posixpath.splitext(location)[1].lstrip(".").lower() or None)
        alt = record.pop(self.config.alt_text_field, None)
        key = record.pop("key", None)
        return Sample(key=str(key) if key is not None else fallback_key, image=image,
                      alt_text=None if alt is None else str(alt), meta=record)
