"""An image folder with sidecar captions (`cat.jpg` + `cat.txt`), the layout diffusion trainers use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from capmill.readers.base import IMAGE_EXTS, InputConfig, Reader, Shard, decode_text
from capmill.sample import ImageRef, Sample


class FolderInput(InputConfig):
    type: Literal["folder"] = "folder"
    path: str
    # Sidecar extensions tried in order; the first that exists is the AltText.
    caption_exts: list[str] = Field(default_factory=lambda: ["txt", "caption"])
    # Images per virtual shard (the folder has no shards of its own).
    shard_size: int = Field(1000, ge=1)

    def build(self) -> FolderReader:
        return FolderReader(self)


class FolderReader(Reader):
    config: FolderInput

    def _images(self) -> list[str]:
        root = self.config.path
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                if name.rpartition(".")[2].lower() in IMAGE_EXTS and not name.startswith("."):
                    found.append(os.path.relpath(os.path.join(dirpath, name), root))
        return found

    def shards(self) -> list[Shard]:
        if not os.path.isdir(self.config.path):
            from capmill.errors import ConfigError

            raise ConfigError(f"input folder {self.config.path!r} does not exist")
        images = self._images()
        size = self.config.shard_size
        return [Shard(f"{i:05d}", self.config.path, i, spec=images[start : start + size])
                for i, start in enumerate(range(0, len(images), size))]

    def read_shard(self, shard: Shard) -> Iterator[Sample]:
        root = self.config.path
        for rel in shard.spec:
            stem, _, ext = rel.rpartition(".")
            meta: dict = {"path": rel}
            alt_text = None
            for cext in self.config.caption_exts:
                sidecar = os.path.join(root, f"{stem}.{cext}")
                if os.path.exists(sidecar):
                    with open(sidecar, "rb") as f:
                        alt_text = decode_text(f.read(), meta)
                    break
            # Keys must be flat names: sub-folders become "__" so the key is also a safe file name.
            key = stem.replace(os.sep, "__")
            yield Sample(key=key, image=ImageRef(path=os.path.join(root, rel), ext=ext.lower()),
                         alt_text=alt_text, meta=meta)
