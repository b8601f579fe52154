"""Parquet shards: the records, one flat column per caption and score, optionally the media.

Every file carries Hugging Face `datasets` feature metadata in its schema, so
`load_dataset("parquet", data_files=...)` gives the `image` column (when written) as PIL images
and the `audio` column as decoded audio.
"""

from __future__ import annotations

import json
import os

from capmill.media.image import sniff_ext
from capmill.sample import AUDIO, Sample
from capmill.sample import IMAGE as IMAGE_KIND
from capmill.writers.base import ShardWriter, row_fields, tmp_name, usable_image

FIXED = ["key", "status", "error", "alt_text", "text"]
IMAGE = "image"
REGIONS = "regions"
AUDIO_COLUMN = "audio"


class ParquetWriter(ShardWriter):
    """Columns: key, status, error, alt_text, text (the chosen caption), `caption.NAME` and
    `score.NAME` for each caption and score present in the shard, `regions` (the region captions
    as a JSON list) when a sample of the shard has them, `image` when `images` is on
    (Hugging Face's image struct: `bytes` and `path`, null for a sample without a usable image),
    and `record` (the full record as JSON, so nothing is lost when the flat columns do not fit a
    consumer). `error` and `alt_text` are null when absent, as the record has them.
    """

    def __init__(self, out_dir: str, shard: str, text_field: str, subdir: str | None = None, images: bool = False,
                 storage_options: dict | None = None):
        super().__init__(out_dir, shard, text_field, storage_options)
        directory = os.path.join(out_dir, subdir) if subdir else out_dir
        self.store.makedirs(directory)
        self.rel = os.path.join(subdir, f"{shard}.parquet") if subdir else f"{shard}.parquet"
        self.final = os.path.join(out_dir, self.rel)
        self.tmp = tmp_name(directory, f"{shard}.parquet")
        self.images = images
        self.rows: list[dict] = []

    def write(self, sample: Sample) -> None:
        row = row_fields(sample, self.chosen_text(sample))
        row["error"], row["alt_text"] = sample.error, sample.alt_text  # nulls are typed columns here
        for name, caption in sample.captions.items():
            row[f"caption.{name}"] = caption.text
        for name, value in sample.scores.items():
            row[f"score.{name}"] = float(value)
        if sample.regions:
            row[REGIONS] = json.dumps(sample.regions, ensure_ascii=False)
        if self.images:
            kind = sample.media.kind
            data = usable_image(sample) if kind == IMAGE_KIND else None  # an image column holds images
            ext = sample.image.ext or sniff_ext(data) or "bin"
            row[IMAGE] = None if data is None else {"bytes": data, "path": f"{sample.key}.{ext}"}
            if kind == AUDIO:
                sound = usable_image(sample)
                if sound is None and sample.ok and sample.media.path is not None:
                    sound = sample.media.read_bytes()  # an audio file read where it lies
                row[AUDIO_COLUMN] = None if sound is None else {"bytes": sound, "path": f"{sample.key}.{sample.media.ext or 'bin'}"}
        self.rows.append(row)

    def commit(self) -> list[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns: dict[str, None] = {}
        for row in self.rows:
            columns.update(dict.fromkeys(row))
        extra = sorted(c for c in columns if c not in FIXED and c not in (IMAGE, AUDIO_COLUMN, "record"))
        media = ([IMAGE] if self.images else []) + ([AUDIO_COLUMN] if AUDIO_COLUMN in columns else [])
        names = FIXED + extra + media + ["record"]
        types = {c: _arrow_type(c) for c in names}
        table = pa.table({c: pa.array([row.get(c) for row in self.rows], type=types[c]) for c in names})
        table = table.replace_schema_metadata({b"huggingface": json.dumps(hf_features(names)).encode()})
        if self.store.local:
            pq.write_table(table, self.tmp)
        else:
            with self.store.open(self.tmp, "wb") as f:
                pq.write_table(table, f)
        self.store.replace(self.tmp, self.final)
        self.rows = []
        return [self.rel]

    def abort(self) -> None:
        self.rows = []
        self.store.remove(self.tmp)


def _arrow_type(column: str):
    import pyarrow as pa

    if column.startswith("score."):
        return pa.float64()
    if column in (IMAGE, AUDIO_COLUMN):
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    return pa.string()


def hf_features(names: list[str]) -> dict:
    """The schema metadata `datasets` reads (`{"info": {"features": ...}}`), written as plain
    JSON so writing needs no `datasets` install."""
    features = {}
    for c in names:
        if c == IMAGE:
            features[c] = {"_type": "Image"}
        elif c == AUDIO_COLUMN:
            features[c] = {"_type": "Audio"}
        else:
            features[c] = {"dtype": "float64" if c.startswith("score.") else "string", "_type": "Value"}
    return {"info": {"features": features}}
