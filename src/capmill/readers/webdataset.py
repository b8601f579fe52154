"""Tar shards as img2dataset and OpenCLIP write them: `KEY.jpg` + `KEY.txt` and/or `KEY.json`."""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterator
from typing import Any, Literal

from capmill.errors import DuplicateKeyError
from capmill.readers.base import (
    IMAGE_EXTS,
    InputConfig,
    Reader,
    Shard,
    decode_text,
    expand_paths,
    shard_stem,
    unique_shard_names,
)
from capmill.sample import READ_ERROR, ImageRef, Sample

# Members we never interpret: pickles can run code when loaded.
NEVER_LOAD = ("pkl", "pickle", "pth", "pt", "npy")


class WebDatasetInput(InputConfig):
    type: Literal["webdataset"] = "webdataset"
    # Local paths, globs, brace ranges ("shards/{00000..00099}.tar") or fsspec URLs (s3://, gs://, https://).
    path: str | list[str]
    # Where the AltText is: a member extension ("txt", "caption") or a key inside the
    # member KEY.json ("json:caption").
    alt_text: str = "txt"

    def build(self) -> WebDatasetReader:
        return WebDatasetReader(self)


def split_member(name: str) -> tuple[str, str]:
    """`dir/abc.def.jpg` → (`dir/abc`, `def.jpg`): webdataset's rule, the key ends at the first dot of the basename."""
    dirname, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return (posixpath.join(dirname, stem) if dirname else stem), ext.lower()


def is_unsafe(name: str) -> bool:
    return name.startswith("/") or ".." in name.split("/")


class WebDatasetReader(Reader):
    config: WebDatasetInput

    def shards(self) -> list[Shard]:
        paths = expand_paths(self.config.path, self.config.storage_options)
        return unique_shard_names([Shard(shard_stem(p), p, i) for i, p in enumerate(paths)])

    def read_shard(self, shard: Shard) -> Iterator[Sample]:
        import fsspec

        with fsspec.open(shard.source, "rb", **self.config.storage_options) as f:
            # Stream mode: members are read in order without seeking, so remote shards work.
            with tarfile.open(fileobj=f, mode="r|*") as tar:
                yield from self._samples(self._groups(tar, shard), shard)

    def _groups(self, tar: tarfile.TarFile, shard: Shard) -> Iterator[tuple[str, dict[str, bytes], list[str]]]:
        """Yields (key, {ext: bytes}, refused member names) for each run of members sharing a key."""
        seen: set[str] = set()
        key: str | None = None
        members: dict[str, bytes] = {}
        refused: list[str] = []
        for info in tar:
            if not info.isfile():
                continue
            if is_unsafe(info.name):
                refused.append(info.name)
                continue
            k, ext = split_member(info.name)
            if k != key:
                if key is not None:
                    yield key, members, refused
                    refused = []
                if k in seen:
                    raise DuplicateKeyError(f"key {k!r} appears twice in shard {shard.source} (members are not grouped)")
                seen.add(k)
                key, members = k, {}
            fileobj = tar.extractfile(info)
            members[ext] = fileobj.read() if fileobj is not None else b""
        if key is not None or refused:
            yield key, members, refused

    def _samples(self, groups, shard: Shard) -> Iterator[Sample]:
        n_refused = 0
        for key, members, refused in groups:
            for name in refused:
                # The member is never extracted; its row says why it is missing from the data.
                n_refused += 1
                yield Sample(
                    key=f"refused_{n_refused:05d}",
                    status=READ_ERROR,
                    error=f"tar member {name!r} refused: absolute or parent-relative path",
                    meta={"member": name, "shard": shard.name},
                )
            if key is not None:
                yield self._sample(key, members)

    def _sample(self, key: str, members: dict[str, bytes]) -> Sample:
        meta: dict[str, Any] = {}
        image = ImageRef()
        for ext in members:
            if ext in IMAGE_EXTS:
                image = ImageRef(data=members[ext], ext=ext)
                break
        if "json" in members:
            try:
                meta["json"] = json.loads(members["json"])
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                meta["json_error"] = str(e)
        alt_text = self._alt_text(members, meta)
        ignored = sorted(ext for ext in members if ext in NEVER_LOAD)
        if ignored:
            meta["ignored_members"] = ignored
        sample = Sample(key=key, image=image, alt_text=alt_text, meta=meta)
        for field in ("url", "width", "height"):
            if isinstance(meta.get("json"), dict) and field in meta["json"]:
                meta[field] = meta["json"][field]
        return sample

    def _alt_text(self, members: dict[str, bytes], meta: dict[str, Any]) -> str | None:
        source = self.config.alt_text
        if source.startswith("json:"):
            value = meta.get("json", {}).get(source[5:]) if isinstance(meta.get("json"), dict) else None
            return None if value is None else str(value)
        raw = members.get(source)
        return None if raw is None else decode_text(raw, meta)
