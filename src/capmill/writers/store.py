"""Where an output lives: a local directory, or an object store (`s3://`, `gs://`) through fsspec.

Everything that writes or reads an output directory (the writers, `OutputDir`, the leases) goes
through a `Store`, so the commit protocol is the same on both:

- local: files are written under a hidden temporary name and renamed into place (atomic);
- object store: there is no rename. A temporary is uploaded under a hidden name (`.NAME.tmp-…`,
  which readers skip) and copied to its final name on commit; one PUT is atomic, so a reader
  sees no object or a whole one. A shard counts only once its commit record, written last, exists,
  so final objects of a shard without a record are ignored (and overwritten when it is redone).
  Leases are objects created with a conditional PUT (`If-None-Match: *`), refreshed and taken
  over with `If-Match` on the ETag they were read with: two runs never both hold one.

Listings bypass fsspec's cache: other processes write the same prefix.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from typing import IO, Any

from capmill.writers.base import is_temporary


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def store_for(path: str, storage_options: dict[str, Any] | None = None) -> Store:
    return ObjectStore(path, storage_options) if is_url(path) else LOCAL


class Store:
    """The local file system; `ObjectStore` overrides what an object store does differently."""

    local = True

    def open(self, path: str, mode: str = "rb") -> IO:
        return open(path, mode)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def listdir(self, path: str) -> list[str]:
        """Names in a folder; [] when it does not exist."""
        try:
            return os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def remove(self, path: str) -> None:
        """A file or a folder with what it holds; nothing when absent."""
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        except FileNotFoundError:
            pass

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def read_json(self, path: str) -> Any:
        with self.open(path, "r") as f:
            return json.load(f)

    def remove_temporaries(self, root: str, shard: str | None = None) -> int:
        from capmill.writers.base import remove_temporaries

        return remove_temporaries(root, shard)


LOCAL = Store()


class ObjectStore(Store):
    """An fsspec object store under one URL root (its protocol decides the file system)."""

    local = False

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None):
        import fsspec

        self.root = root
        self.protocol = root.split("://", 1)[0]
        options = {"use_listings_cache": False, "skip_instance_cache": True, **(storage_options or {})}
        self.fs = fsspec.filesystem(self.protocol, **options)

    def open(self, path: str, mode: str = "rb") -> IO:
        return self.fs.open(path, mode)

    def exists(self, path: str) -> bool:
        self.fs.invalidate_cache(path)
        return self.fs.exists(path)

    def isdir(self, path: str) -> bool:
        self.fs.invalidate_cache(path)
        return self.fs.isdir(path)

    def listdir(self, path: str) -> list[str]:
        self.fs.invalidate_cache(path)
        try:
            return [os.path.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def makedirs(self, path: str) -> None:
        pass  # prefixes exist through the objects under them

    def remove(self, path: str) -> None:
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(path)

    def replace(self, src: str, dst: str) -> None:
        """Copy to the final name, then delete the temporary (no rename on object stores)."""
        if self.fs.isdir(src):
            self.remove(dst)
            self.fs.copy(src, dst, recursive=True)
        else:
            self.fs.copy(src, dst)
        self.remove(src)

    def write_bytes(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(path, data)

    def remove_temporaries(self, root: str, shard: str | None = None) -> int:
        """Delete objects under a hidden temporary name (or inside a temporary folder)."""
        try:
            found = self.fs.find(root, withdirs=False)
        except FileNotFoundError:
            return 0
        prefix = root.split("://", 1)[-1].rstrip("/") + "/"
        tops: dict[str, list[str]] = {}
        for key in found:
            rel = key[len(prefix):] if key.startswith(prefix) else key
            parts = rel.split("/")
            for i, part in enumerate(parts):
                if is_temporary(part, shard):
                    tops.setdefault("/".join(parts[: i + 1]), []).append(key)
                    break
        for keys in tops.values():
            self.fs.rm(keys)
        self.fs.invalidate_cache(root)
        return len(tops)

    # ---- conditional writes, for leases ------------------------------------------------------

    def stat(self, path: str) -> tuple[Any, float, str] | None:
        """(content, modification time in the store's clock, ETag) or None when absent."""
        self.fs.invalidate_cache(path)
        try:
            info = self.fs.info(path)
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        return data, _seconds(info.get("LastModified") or info.get("mtime") or info.get("updated")), _etag(info)

    def create(self, path: str, data: bytes) -> str | None:
        """Create `path` unless it exists; its ETag, or None when it existed. S3 decides in the
        PUT itself (`If-None-Match: *`); other stores are looked at first, then written."""
        if self.protocol not in ("s3", "s3a"):
            if self.fs.exists(path):
                return None
            self.fs.pipe_file(path, data)
            return _etag(self.fs.info(path))
        try:
            out = self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return None
        return _etag(out) or _etag(self.fs.info(path))

    def replace_if(self, path: str, data: bytes, etag: str) -> str | None:
        """Overwrite `path` only if it is still the object with `etag`; the new ETag or None.
        S3 checks the ETag in the PUT itself (`If-Match`); other stores are read, compared and
        written, which leaves a short window where two writers can both succeed."""
        if self.protocol not in ("s3", "s3a"):
            found = self.stat(path)
            if found is None or found[2] != etag:
                return None
            self.fs.pipe_file(path, data)
            return _etag(self.fs.info(path))
        try:
            out = self.fs.pipe_file(path, data, IfMatch=etag)
        except FileNotFoundError:
            return None
        except OSError as e:
            if "precondition" in str(e).lower() or getattr(e, "errno", None) == 22:
                return None
            raise
        return _etag(out) or _etag(self.fs.info(path))

    def now(self, folder: str) -> float:
        """The store's clock: the modification time of an object written just now."""
        import uuid

        probe = f"{folder.rstrip('/')}/.clock.tmp-{uuid.uuid4().hex[:8]}"
        self.fs.pipe_file(probe, b"")
        try:
            return _seconds(self.fs.info(probe).get("LastModified"))
        finally:
            self.remove(probe)


def _etag(info: Any) -> str | None:
    if isinstance(info, dict):
        tag = info.get("ETag") or info.get("etag")
        return str(tag) if tag else None
    return None


def _seconds(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return 0.0
