"""Export shards on the writer contract of `capmill.writers`: each shard's files are written under
hidden temporary names and appear under their final names only on `commit`; `abort` removes them.

The tar and sidecar shards are the run's own writers (`WebDatasetWriter`, `SidecarWriter`) with the
export's members and text; the LLaVA and parquet shards use the same temporary-name helper.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from capmill.sample import Sample
from capmill.writers.base import ShardWriter, tmp_name
from capmill.writers.sidecar import SidecarWriter
from capmill.writers.webdataset import WebDatasetWriter


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


class TarShard(WebDatasetWriter):
    """A webdataset tar whose members the exporter chooses (deterministic tar headers, as the run's)."""

    def __init__(self, out_dir: str, shard: str):
        super().__init__(out_dir, shard, text_field="alt_text")

    def add(self, name: str, data: bytes) -> None:
        self._add(name, data)

    def add_json(self, name: str, obj: Any) -> None:
        self._add(name, _json(obj))

    def write(self, sample: Sample) -> None:
        raise TypeError("an export tar takes its members through add()")


class SidecarShard(SidecarWriter):
    """An image folder with a `.txt` per image holding the export's drawn text; the folder may be
    named apart from the shard (kohya's `N_name`)."""

    def __init__(self, out_dir: str, folder: str):
        super().__init__(out_dir, folder, text_field="alt_text")
        self._text = ""

    def chosen_text(self, sample: Sample) -> str:
        return self._text

    def write_text(self, sample: Sample, text: str) -> bool:
        """Write the image and `text`; False when the sample has no image bytes to write."""
        if sample.image.data is None or not sample.ok:
            return False
        self._text = text
        self.write(sample)
        return True


class LlavaShard(ShardWriter):
    """One shard of a LLaVA export: its images in `images/SHARD/` and its conversations in
    `_llava/SHARD.json`, from which `llava.json` is assembled once every shard is committed."""

    def __init__(self, out_dir: str, shard: str):
        super().__init__(out_dir, shard, text_field="alt_text")
        images = os.path.join(out_dir, "images")
        os.makedirs(images, exist_ok=True)
        self.final_images = os.path.join(images, shard)
        self.tmp_images = tmp_name(images, shard)
        os.makedirs(self.tmp_images)
        self.parts = os.path.join(out_dir, PARTS_DIR)
        os.makedirs(self.parts, exist_ok=True)
        self.records: list[dict[str, Any]] = []

    def image_path(self, key: str, ext: str) -> str:
        return f"images/{self.shard}/{key}.{ext}"

    def add(self, key: str, ext: str, image: bytes, record: dict[str, Any]) -> None:
        path = os.path.join(self.tmp_images, f"{key}.{ext}")
        os.makedirs(os.path.dirname(path), exist_ok=True)  # keys may hold sub-folders ("dir/key")
        with open(path, "wb") as f:
            f.write(image)
        self.records.append(record)

    def write(self, sample: Sample) -> None:
        raise TypeError("a LLaVA shard takes its records through add()")

    def commit(self) -> list[str]:
        if os.path.exists(self.final_images):
            shutil.rmtree(self.final_images)
        os.replace(self.tmp_images, self.final_images)
        part = os.path.join(self.parts, f"{self.shard}.json")
        tmp = tmp_name(self.parts, f"{self.shard}.json")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.records, f, ensure_ascii=False)
        os.replace(tmp, part)
        return [f"images/{self.shard}/", f"{PARTS_DIR}/{self.shard}.json"]

    def abort(self) -> None:
        shutil.rmtree(self.tmp_images, ignore_errors=True)


PARTS_DIR = "_llava"


def assemble_llava(out_dir: str, shards: list[str]) -> str:
    """`llava.json`: the committed shards' conversations in shard order, one JSON array."""
    final = os.path.join(out_dir, "llava.json")
    tmp = tmp_name(out_dir, "llava.json")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write("[")
        first = True
        for shard in shards:
            with open(os.path.join(out_dir, PARTS_DIR, f"{shard}.json"), encoding="utf-8") as f:
                for record in json.load(f):
                    out.write(("\n" if first else ",\n") + json.dumps(record, ensure_ascii=False))
                    first = False
        out.write("\n]\n")
    os.replace(tmp, final)
    return "llava.json"


class DiffusionParquetShard(ShardWriter):
    """One parquet per shard: key, caption, caption_source, alt_text, image bytes, image_ext."""

    def __init__(self, out_dir: str, shard: str):
        super().__init__(out_dir, shard, text_field="alt_text")
        self.final = os.path.join(out_dir, f"{shard}.parquet")
        self.tmp = tmp_name(out_dir, f"{shard}.parquet")
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def write(self, sample: Sample) -> None:
        raise TypeError("a diffusion parquet shard takes its rows through add()")

    def commit(self) -> list[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("key", pa.string()), ("caption", pa.string()), ("caption_source", pa.string()),
                            ("alt_text", pa.string()), ("image", pa.binary()), ("image_ext", pa.string())])
        pq.write_table(pa.Table.from_pylist(self.rows, schema=schema), self.tmp)
        os.replace(self.tmp, self.final)
        self.rows = []
        return [os.path.basename(self.final)]

    def abort(self) -> None:
        self.rows = []
        if os.path.exists(self.tmp):
            os.remove(self.tmp)
