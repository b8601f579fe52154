"""The shard-writer contract: write under a temporary name, rename into place on commit.

A reader of the output directory never sees a half-written shard under a final name: final
names appear only through `os.replace`, which is atomic on POSIX file systems (on an object
store, through a copy of the uploaded temporary: see capmill.writers.store).
"""

from __future__ import annotations

import os
import shutil
import uuid
from abc import ABC, abstractmethod
from typing import Any

from capmill.sample import DECODE_ERROR, READ_ERROR, Sample

TMP_MARK = ".tmp-"

# Statuses whose image bytes are absent or are not an image a loader could decode.
_NO_IMAGE = (READ_ERROR, DECODE_ERROR)


def tmp_name(out_dir: str, final_name: str) -> str:
    """A hidden temporary path next to the final one (same file system, so rename is atomic)."""
    return os.path.join(out_dir, f".{final_name}{TMP_MARK}{uuid.uuid4().hex[:8]}")


def is_temporary(name: str, shard: str | None = None) -> bool:
    """A writer's temporary (`.FINAL.tmp-XXXX`), of `shard`'s outputs when given."""
    if not (name.startswith(".") and TMP_MARK in name):
        return False
    if shard is None:
        return True
    final = name[1:name.index(TMP_MARK)]
    return final == shard or final.rsplit(".", 1)[0] == shard


def remove_temporaries(out_dir: str, shard: str | None = None) -> int:
    """Delete what a killed run left half-written (of one shard when given). Returns how many
    were removed."""
    removed = 0
    for root, dirs, files in os.walk(out_dir):
        for name in list(dirs) + files:
            if is_temporary(name, shard):
                path = os.path.join(root, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
                removed += 1
                if name in dirs:
                    dirs.remove(name)
    return removed


def usable_image(sample: Sample) -> bytes | None:
    """The encoded image a training loader can decode, or None: a sample that could not be read
    or decoded keeps its record, but its bytes (none, or not an image) are not offered as one."""
    if sample.status in _NO_IMAGE:
        return None
    return sample.image.data


def row_fields(sample: Sample, text: str) -> dict[str, Any]:
    """The fixed fields of an output row, the same in every row: a loader that infers its schema
    from the first rows (Hugging Face `datasets` reads five) sees strings everywhere, so an error
    or a missing AltText is "" here. The full record, with its nulls and every caption, score
    and metadata, is the JSON string `record` (`Sample.from_dict` reads a row back)."""
    return {
        "key": sample.key,
        "status": sample.status,
        "error": sample.error or "",
        "alt_text": sample.alt_text or "",
        "text": text,
        "record": sample.to_json(),
    }


class ShardWriter(ABC):
    """Writes one output shard. `commit` returns the final paths, relative to the output dir."""

    def __init__(self, out_dir: str, shard: str, text_field: str, storage_options: dict[str, Any] | None = None):
        from capmill.writers.store import store_for

        self.out_dir = out_dir
        self.shard = shard
        self.text_field = text_field
        # A local folder, or an object store URL (capmill.writers.store).
        self.store = store_for(out_dir, storage_options)

    @abstractmethod
    def write(self, sample: Sample) -> None: ...

    @abstractmethod
    def commit(self) -> list[str]: ...

    @abstractmethod
    def abort(self) -> None: ...

    @staticmethod
    def media_ext(sample: Sample) -> str:
        """The extension the media is stored under: its own, else sniffed from its bytes."""
        from capmill.media.kinds import sniff

        ref = sample.media
        return ref.ext or sniff(ref.data)[1] or "bin"

    @staticmethod
    def open_media(sample: Sample):
        """(size, file object) of a media file that was never read whole (a video read from a
        folder or manifest where it lies), to copy into the output in chunks; None when the
        sample has its bytes in memory or no media."""
        ref = sample.media
        if ref.data is not None or ref.path is None or ref.kind == "image":
            return None
        import fsspec

        f = fsspec.open(ref.path, "rb").open()
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(0)
        return size, f

    def chosen_text(self, sample: Sample) -> str:
        """The training text: `output.text_field`, falling back to the AltText when missing."""
        text = sample.text(self.text_field)
        if text is None:
            text = sample.alt_text
        return text or ""
