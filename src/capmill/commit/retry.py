"""`--retry-errors`: rewrite a committed shard with its retryable samples processed again.

The shard is read again from the input, in the same order. A sample whose committed record is
retryable goes through decode and every stage as in a first run; every other sample is
*settled*: its committed record is written back as it was, with the image bytes the writers
store taken from the input again (and, for `output.reencode`, the image decoded again exactly
when the first run had decoded it). Dropped samples whose records were not kept (no rejects
output) are not written, and their counts are carried into the new commit record, as are the
per-stage counts of every settled sample. The shard is then committed under the usual protocol,
so a kill at any moment leaves either the old shard or the new one.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from capmill.outputdir import REJECTS_DIR
from capmill.sample import READ_ERROR, RETRYABLE, Sample

if TYPE_CHECKING:
    from capmill.media.image import ImageConfig
    from capmill.outputdir import OutputDir


@dataclass
class Settled:
    """What a retry keeps of a committed shard."""

    records: dict[str, Sample] = field(default_factory=dict)  # key → committed record, not retryable
    retry: set[str] = field(default_factory=set)  # keys to process again
    carried_drops: Counter = field(default_factory=Counter)
    carried_stages: dict[str, dict[str, int]] = field(default_factory=dict)


def load_settled(out: OutputDir, stats: dict[str, Any]) -> Settled:
    """The committed records of a shard (main output and rejects) split into settled and retry."""
    shard, outputs = stats["shard"], stats.get("outputs", [])
    settled = Settled(carried_stages=dict(stats.get("stages") or {}))
    records: list[Sample] = []
    if f"{shard}.parquet" in outputs:
        records.extend(_parquet_records(os.path.join(out.path, f"{shard}.parquet")))
    elif f"{shard}.tar" in outputs:
        records.extend(_tar_records(os.path.join(out.path, f"{shard}.tar")))
    else:
        raise ValueError(f"shard {shard}: --retry-errors needs a parquet or webdataset output to read its records from")
    rejects = f"{REJECTS_DIR}/{shard}.parquet"
    kept_drops: Counter = Counter()
    if rejects in outputs:
        for sample in _parquet_records(os.path.join(out.path, rejects)):
            records.append(sample)
            kept_drops[sample.error or "unspecified"] += 1
    for sample in records:
        if sample.status in RETRYABLE:
            settled.retry.add(sample.key)
        else:
            settled.records[sample.key] = sample
    settled.carried_drops = Counter(stats.get("drops") or {}) - kept_drops
    return settled


def restore_image(record: Sample, image_config: ImageConfig, reencode: bool) -> None:
    """Give a settled `record` (whose `image` was taken from the input again) what the writers
    stored the first time: the bytes read, and for `reencode` the image decoded again, exactly
    where the first run had read and decoded them."""
    record.image.image = None
    first_read = record.status != READ_ERROR or "decoded_size" in record.meta
    if image_config.decode and first_read and record.image.data is None:
        try:
            record.image.read_bytes()
        except Exception:
            pass  # the first run could not read it either: its record says so
    if reencode and "decoded_size" in record.meta and record.image.data is not None:
        from capmill.media.image import decode_image

        record.image.image = decode_image(record.image.data, image_config)


def is_dropped_unkept(key: str, settled: Settled) -> bool:
    """A sample of the input that neither has a record nor is retried: it was dropped and its
    record not kept; it is not written again (its counts are carried)."""
    return key not in settled.records and key not in settled.retry


def _parquet_records(path: str):
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(columns=["record"]):
        for text in batch.column("record").to_pylist():
            yield Sample.from_json(text)


def _tar_records(path: str):
    from capmill.readers.webdataset import split_member

    with tarfile.open(path, "r|") as tar:
        for info in tar:
            if split_member(info.name)[1] == "json":
                yield Sample.from_dict(json.loads(tar.extractfile(info).read()))

