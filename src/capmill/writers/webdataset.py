"""Tar shards for training: per sample the image, `KEY.json` and `KEY.txt` (the chosen caption).

Laid out so that webdataset, OpenCLIP and Hugging Face `datasets` (`load_dataset("webdataset",
data_files=...)`) read them without help:

- the image member has one name for the whole output (`KEY.jpg` by default, whatever the source
  format: loaders decode by content, and one name means one image field rather than a `jpg`
  field that is None for every PNG); its bytes are the original file's unless `reencode` is set;
- `KEY.json` holds fields of fixed type (`row_fields`: key, status, error, alt_text, text) and
  the full record as the JSON string `record`;
- samples that could not be read or decoded have no image member, and come after the others in
  their tar (in reader order), so a loader that infers the fields from the first samples sees
  the image field;
- a video or audio file (or a clip of one) keeps its own extension (`KEY.mp4`, `KEY.flac`, ...):
  `image_ext` names image members only. A video or audio file read from a file where it lies is
  copied into the tar in chunks, never held whole.
"""

from __future__ import annotations

import io
import json
import os
import tarfile

from capmill.media.image import encode_image, sniff_ext
from capmill.sample import AUDIO, VIDEO, Sample
from capmill.writers.base import _NO_IMAGE, ShardWriter, row_fields, tmp_name, usable_image

_EXT_OF_FORMAT = {"jpeg": "jpg", "png": "png", "webp": "webp"}
ORIGINAL = "original"


class WebDatasetWriter(ShardWriter):
    def __init__(self, out_dir: str, shard: str, text_field: str, reencode: str | None = None, quality: int = 90,
                 image_ext: str = "jpg", storage_options: dict | None = None):
        super().__init__(out_dir, shard, text_field, storage_options)
        self.reencode = reencode
        self.quality = quality
        self.image_ext = _EXT_OF_FORMAT[reencode] if reencode else image_ext
        self.final = os.path.join(out_dir, f"{shard}.tar")
        self.tmp = tmp_name(out_dir, f"{shard}.tar")
        # An object store gets the tar streamed into an upload of the temporary.
        self._upload = None if self.store.local else self.store.open(self.tmp, "wb")
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.GNU_FORMAT) if self._upload is None else \
            tarfile.open(fileobj=self._upload, mode="w", format=tarfile.GNU_FORMAT)
        # (key, json, txt) of samples without an image, written after the others at commit.
        self.imageless: list[tuple[str, bytes, bytes]] = []

    def _add(self, name: str, data: bytes) -> None:
        # Fixed metadata (mtime 0, uid 0, mode 644) so the same records give the same bytes.
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        self.tar.addfile(info, io.BytesIO(data))

    def _image(self, sample: Sample) -> tuple[bytes, str] | None:
        data = usable_image(sample)
        if data is None:
            return None
        if self.reencode and sample.image.image is not None:
            data = encode_image(sample.image.image, self.reencode, self.quality)
        ext = self.image_ext
        if ext == ORIGINAL:
            ext = sample.image.ext or sniff_ext(data) or "bin"
        return data, ext

    def _video(self, sample: Sample, doc: bytes, text: str) -> bool:
        """Write a video (or audio) sample's members; False when it has no usable media (then it
        is imageless)."""
        data = usable_image(sample)
        source = self.open_media(sample) if data is None and sample.status not in _NO_IMAGE else None
        if data is None and source is None:
            return False
        name = f"{sample.key}.{self.media_ext(sample)}"
        if data is not None:
            self._add(name, data)
        else:
            size, f = source
            with f:
                info = tarfile.TarInfo(name)
                info.size, info.mode = size, 0o644
                self.tar.addfile(info, f)
        self._add(f"{sample.key}.json", doc)
        self._add(f"{sample.key}.txt", text.encode("utf-8"))
        return True

    def write(self, sample: Sample) -> None:
        text = self.chosen_text(sample)
        doc = json.dumps(row_fields(sample, text), ensure_ascii=False).encode("utf-8")
        if sample.media.kind in (VIDEO, AUDIO):
            if not self._video(sample, doc, text):
                self.imageless.append((sample.key, doc, text.encode("utf-8")))
            return
        image = self._image(sample)
        if image is None:
            self.imageless.append((sample.key, doc, text.encode("utf-8")))
            return
        data, ext = image
        self._add(f"{sample.key}.{ext}", data)
        self._add(f"{sample.key}.json", doc)
        self._add(f"{sample.key}.txt", text.encode("utf-8"))

    def commit(self) -> list[str]:
        for key, doc, text in self.imageless:
            self._add(f"{key}.json", doc)
            self._add(f"{key}.txt", text)
        self.imageless = []
        self.tar.close()
        if self._upload is not None:
            self._upload.close()
        self.store.replace(self.tmp, self.final)
        return [os.path.basename(self.final)]

    def abort(self) -> None:
        self.imageless = []
        try:
            self.tar.close()
            if self._upload is not None:
                self._upload.close()
        finally:
            self.store.remove(self.tmp)
