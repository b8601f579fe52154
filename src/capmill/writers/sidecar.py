"""Image folders with a `.txt` caption next to each image, the layout diffusion trainers read."""

from __future__ import annotations

import os
import shutil

from capmill.sample import Sample
from capmill.writers.base import ShardWriter, tmp_name


class SidecarWriter(ShardWriter):
    """Writes `OUT/SHARD/KEY.EXT` and `OUT/SHARD/KEY.txt`; samples without image bytes are skipped
    here (their record is still in the other outputs)."""

    def __init__(self, out_dir: str, shard: str, text_field: str, storage_options: dict | None = None):
        super().__init__(out_dir, shard, text_field, storage_options)
        self.final = os.path.join(out_dir, shard)
        self.tmp = tmp_name(out_dir, shard)
        if self.store.local:
            os.makedirs(self.tmp)

    def write(self, sample: Sample) -> None:
        data = sample.image.data
        source = self.open_media(sample) if data is None and sample.ok else None
        if (data is None and source is None) or not sample.ok:
            return
        image_path = os.path.join(self.tmp, f"{sample.key}.{self.media_ext(sample)}")
        self.store.makedirs(os.path.dirname(image_path))  # keys may hold sub-folders ("dir/key")
        with self.store.open(image_path, "wb") as f:
            if data is not None:
                f.write(data)
            else:
                with source[1] as media:
                    shutil.copyfileobj(media, f)
        with self.store.open(os.path.join(self.tmp, f"{sample.key}.txt"), "wb") as f:
            f.write(self.chosen_text(sample).encode("utf-8"))

    def commit(self) -> list[str]:
        if self.store.local:
            if os.path.exists(self.final):
                shutil.rmtree(self.final)
            os.replace(self.tmp, self.final)
        else:
            self.store.replace(self.tmp, self.final)
        return [os.path.basename(self.final) + "/"]

    def abort(self) -> None:
        if self.store.local:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            self.store.remove(self.tmp)
