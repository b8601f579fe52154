"""A JSON-lines manifest: one `{key?, image_path, alt_text, ...}` object per line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from capmill import keys
from capmill.errors import ConfigError, InputRefused
from capmill.keys import Key
from capmill.readers.base import InputConfig, Reader, Shard, expand_paths, shard_stem
from capmill.readers.locate import LocationConfig, Locator, with_downloads
from capmill.sample import READ_ERROR, ImageRef, Sample

# Lines of the first file that `check` reads to see which fields the manifest has.
CHECK_LINES = 1000


class JsonlInput(InputConfig, LocationConfig):
    type: Literal["jsonl"] = "jsonl"
    path: str | list[str]
    # A path relative to the manifest's folder (see `root`), or an http(s) URL.
    image_field: str = "image_path"
    # None: the manifest has no AltText.
    alt_text_field: str | None = "alt_text"
    # Lines per virtual shard.
    shard_size: int = Field(1000, ge=1)

    def provides(self) -> frozenset[Key]:
        fields = {keys.ALT_TEXT, keys.IMAGE, keys.VIDEO, keys.AUDIO}
        if self.alt_text_field is None:
            fields.discard(keys.ALT_TEXT)
        return frozenset(fields)

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

    def check(self) -> None:
        """The configured fields against the first lines of the first file: a field that none of
        them has is a ConfigError listing the fields they do have."""
        import fsspec

        paths = expand_paths(self.config.path, self.config.storage_options)
        seen: dict[str, int] = {}
        n = 0
        with fsspec.open(paths[0], "rb", **self.config.storage_options) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    n += 1
                    for name in record:
                        seen[name] = seen.get(name, 0) + 1
                if n >= CHECK_LINES:
                    break
        if n == 0:
            return  # an empty manifest (or no JSON object in it) has nothing to check
        wanted = {"image_field": self.config.image_field, "alt_text_field": self.config.alt_text_field}
        for option, name in wanted.items():
            if name is not None and name not in seen:
                hint = " (or null when the manifest has no AltText)" if option == "alt_text_field" else ""
                raise ConfigError(
                    f"input.{option}: no line of the first {n} in {paths[0]} has the field {name!r}; "
                    f"fields found: {', '.join(sorted(seen)) or '(none)'}. Set input.{option} to one of them{hint}")

    def read_shard(self, shard: Shard) -> Iterator[Sample]:
        yield from with_downloads(self._lines(shard), self.config.fetch)

    def _lines(self, shard: Shard) -> Iterator[Sample]:
        import fsspec

        start, stop = shard.spec
        locator = Locator.for_file(shard.source, self.config)
        with fsspec.open(shard.source, "rb", **self.config.storage_options) as f:
            for lineno, line in enumerate(f):
                if lineno < start:
                    continue
                if lineno >= stop:
                    break
                yield self._sample(line, lineno, locator, shard)

    def _sample(self, line: bytes, lineno: int, locator: Locator, shard: Shard) -> Sample:
        fallback_key = f"{shard_stem(shard.source)}_{lineno:08d}"
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("line is not a JSON object")
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return Sample(key=fallback_key, status=READ_ERROR, error=f"line {lineno + 1}: {e}")
        location = record.pop(self.config.image_field, None)
        image, refused = ImageRef(), None
        if isinstance(location, str) and location:
            try:
                image = locator.locate(location)
            except InputRefused as e:
                refused = e.reason
                record["refused_location"] = location[:500]
        alt = record.pop(self.config.alt_text_field, None) if self.config.alt_text_field else None
        key = record.pop("key", None)
        sample = Sample(key=str(key) if key is not None else fallback_key, image=image,
                        alt_text=None if alt is None else str(alt), meta=record)
        if refused is not None:
            sample.fail(READ_ERROR, refused)
        return sample
