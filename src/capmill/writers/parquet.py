"""Parquet shards: the records without image bytes, one flat column per caption and score."""

from __future__ import annotations

import json
import os

from capmill.sample import Sample
from capmill.writers.base import ShardWriter, tmp_name


class ParquetWriter(ShardWriter):
    """Columns: key, status, error, alt_text, text (the chosen caption), `caption.NAME` and
    `score.NAME` for each caption and score present in the shard, and `record` (the full record
    as JSON, so nothing is lost when the flat columns do not fit a consumer).
    """

    def __init__(self, out_dir: str, shard: str, text_field: str, subdir: str | None = None):
        super().__init__(out_dir, shard, text_field)
        directory = os.path.join(out_dir, subdir) if subdir else out_dir
        os.makedirs(directory, exist_ok=True)
        self.rel = os.path.join(subdir, f"{shard}.parquet") if subdir else f"{shard}.parquet"
        self.final = os.path.join(out_dir, self.rel)
        self.tmp = tmp_name(directory, f"{shard}.parquet")
        self.rows: list[dict] = []

    def write(self, sample: Sample) -> None:
        row = {
            "key": sample.key,
            "status": sample.status,
            "error": sample.error,
            "alt_text": sample.alt_text,
            "text": self.chosen_text(sample),
        }
        for name, caption in sample.captions.items():
            row[f"caption.{name}"] = caption.text
        for name, value in sample.scores.items():
            row[f"score.{name}"] = float(value)
        row["record"] = json.dumps(sample.to_dict(), ensure_ascii=False)
        self.rows.append(row)

    def commit(self) -> list[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns: dict[str, None] = {}
        for row in self.rows:
            columns.update(dict.fromkeys(row))
        fixed = ["key", "status", "error", "alt_text", "text"]
        extra = sorted(c for c in columns if c not in fixed and c != "record")
        names = fixed + extra + ["record"]
        types = {c: pa.float64() if c.startswith("score.") else pa.string() for c in names}
        table = pa.table({c: pa.array([row.get(c) for row in self.rows], type=types[c]) for c in names})
        pq.write_table(table, self.tmp)
        os.replace(self.tmp, self.final)
        self.rows = []
        return [self.rel]

    def abort(self) -> None:
        self.rows = []
        if os.path.exists(self.tmp):
            os.remove(self.tmp)
