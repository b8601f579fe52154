"""Tar shards for training: per sample the image or video (a clip's own bytes for a clip),
`KEY.json` (the full record), `KEY.txt`."""

from __future__ import annotations

import io
import os
import tarfile

from capmill.media.image import encode_image
from capmill.sample import Sample
from capmill.writers.base import ShardWriter, tmp_name

_EXT_OF_FORMAT = {"jpeg": "jpg", "png": "png", "webp": "webp"}


class WebDatasetWriter(ShardWriter):
    def __init__(self, out_dir: str, shard: str, text_field: str, reencode: str | None = None, quality: int = 90):
        super().__init__(out_dir, shard, text_field)
        self.reencode = reencode
        self.quality = quality
        self.final = os.path.join(out_dir, f"{shard}.tar")
        self.tmp = tmp_name(out_dir, f"{shard}.tar")
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.GNU_FORMAT)

    def _add(self, name: str, data: bytes) -> None:
        # Fixed metadata (mtime 0, uid 0, mode 644) so the same records give the same bytes.
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        self.tar.addfile(info, io.BytesIO(data))

    def write(self, sample: Sample) -> None:
        key = sample.key
        image = sample.image
        if self.reencode and image.image is not None:
            self._add(f"{key}.{_EXT_OF_FORMAT[self.reencode]}", encode_image(image.image, self.reencode, self.quality))
        elif image.data is not None:
            self._add(f"{key}.{self.media_ext(sample)}", image.data)
        elif (source := self.open_media(sample)) is not None:
            size, f = source
            with f:  # copied in chunks: a long video is never held whole
                info = tarfile.TarInfo(f"{key}.{self.media_ext(sample)}")
                info.size, info.mode = size, 0o644
                self.tar.addfile(info, f)
        self._add(f"{key}.json", sample.to_json().encode("utf-8"))
        self._add(f"{key}.txt", self.chosen_text(sample).encode("utf-8"))

    def commit(self) -> list[str]:
        self.tar.close()
        os.replace(self.tmp, self.final)
        return [os.path.basename(self.final)]

    def abort(self) -> None:
        self.tar.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)
