"""A folder of images, videos or audio files with sidecar captions (`cat.jpg` + `cat.txt`,
`run.mp4` + `run.txt`, `rain.flac` + `rain.txt`), the layout diffusion trainers use. Videos and
audio are read where they lie, never whole."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from capmill import keys
from capmill.keys import Key
from capmill.media.kinds import kind_of
from capmill.readers.base import READABLE_EXTS, InputConfig, Reader, Shard, decode_text
from capmill.readers.locate import confined
from capmill.sample import READ_ERROR, ImageRef, Sample


class FolderInput(InputConfig):
    type: Literal["folder"] = "folder"
    path: str
    # Sidecar extensions tried in order; the first that exists is the AltText.
    caption_exts: list[str] = Field(default_factory=lambda: ["txt", "caption"])
    # Images per virtual shard (the folder has no shards of its own).
    shard_size: int = Field(1000, ge=1)
    # Read images and captions that are links pointing outside the folder.
    allow_outside_root: bool = False

    def provides(self) -> frozenset[Key]:
        fields = {keys.ALT_TEXT, keys.IMAGE, keys.VIDEO, keys.AUDIO}
        if not self.caption_exts:
            fields.discard(keys.ALT_TEXT)
        return frozenset(fields)

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
                if name.rpartition(".")[2].lower() in READABLE_EXTS and not name.startswith("."):
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
        root_real = os.path.realpath(root)
        for rel in shard.spec:
            stem, _, ext = rel.rpartition(".")
            meta: dict = {"path": rel}
            # Keys must be flat names: sub-folders become "__" so the key is also a safe file name.
            key = stem.replace(os.sep, "__")
            image_path = os.path.join(root, rel)
            outside = [] if self.config.allow_outside_root or confined(image_path, root_real) else [rel]
            alt_text = None
            for cext in self.config.caption_exts:
                sidecar = os.path.join(root, f"{stem}.{cext}")
                if os.path.exists(sidecar):
                    if not self.config.allow_outside_root and not confined(sidecar, root_real):
                        outside.append(f"{stem}.{cext}")
                        break
                    with open(sidecar, "rb") as f:
                        alt_text = decode_text(f.read(), meta)
                    break
            if outside:
                # A link out of the folder: neither it nor the sample's other files are read.
                sample = Sample(key=key, meta=meta)
                sample.fail(READ_ERROR, f"{', '.join(outside)} links outside the input folder {root!r} "
                                        "(set allow_outside_root: true to read it)")
                yield sample
                continue
            yield Sample(key=key, image=ImageRef(path=image_path, ext=ext.lower(), kind=kind_of(ext)),
                         alt_text=alt_text, meta=meta)
