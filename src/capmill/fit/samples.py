"""Reading the input for the fit step: only what the stage's `FitRequest` asks for.

The stream of a fit is deterministic (shards in order, samples in shard order), so a refit gives
the same result. Only samples that are ok at read time are handed on (a sample whose bytes cannot
be read or decoded never reaches a stage either).

A capmill output read for scores only (no images) is read as a projection of its parquet
shards: the `key`, `status`, `alt_text` and `score.NAME` columns, without parsing the records or
opening the tar files. NoC's bins over a whole dataset's cosines then cost one column read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

from capmill.errors import ConfigError
from capmill.fit.request import FitRequest
from capmill.sample import OK, Sample


def fit_source(request: FitRequest, run_input: Any) -> Any:
    """The input config the fit reads: the stage's own when it names one, else the run's."""
    chosen = request.input if request.input is not None else run_input
    if chosen is None:
        raise ConfigError(
            "this stage fits on the data before the run, but no input to fit on was given; "
            "give the stage a `fit_input` (any input section, e.g. {type: capmill, path: OUT_OF_AN_EARLIER_RUN})"
        )
    return chosen


def fit_samples(request: FitRequest, source: Any, image_config: Any = None) -> Iterator[Sample]:
    """The samples `request` asks for, from the input config `source`."""
    from capmill.readers.run_output import RunOutputInput

    if isinstance(source, RunOutputInput) and request.projectable():
        yield from _projected(request, source)
        return
    yield from _read(request, source, image_config)


def _per_shard(max_samples: int | None, shards: int) -> int | None:
    return None if max_samples is None else max(1, math.ceil(max_samples / max(shards, 1)))


def _read(request: FitRequest, source: Any, image_config: Any) -> Iterator[Sample]:
    from capmill.media.decode import decode_one
    from capmill.media.image import ImageConfig
    from capmill.sample import READ_ERROR

    reader = source.build()
    shards = reader.shards()
    per_shard = _per_shard(request.max_samples, len(shards))
    image_config = image_config or ImageConfig()
    given = 0
    for shard in shards:
        taken = 0
        for sample in reader.read(shard):
            if (per_shard is not None and taken >= per_shard) or _full(request, given):
                break
            if request.decode and sample.ok:
                decode_one(sample, image_config)
            elif request.image_bytes and sample.ok:
                try:
                    sample.image.read_bytes()
                except Exception as e:  # file systems raise their own types
                    sample.fail(READ_ERROR, f"{type(e).__name__}: {e}")
            if not sample.ok:
                continue
            taken += 1
            given += 1
            yield sample
        if _full(request, given):
            return


def _full(request: FitRequest, given: int) -> bool:
    return request.max_samples is not None and given >= request.max_samples


def _projected(request: FitRequest, source: Any) -> Iterator[Sample]:
    """Samples holding only key, alt_text and the requested scores, from a capmill output."""
    import pyarrow.parquet as pq

    from capmill.outputdir import OutputDir

    out = OutputDir(source.path)
    if out.read_run() is None:
        raise ConfigError(f"{source.path!r} is not a capmill output directory (no _run.json)")
    stats = out.all_stats()
    per_shard = _per_shard(request.max_samples, len(stats))
    tar_shards: dict[str, Any] | None = None
    given = 0
    for shard_stats in stats:
        name = shard_stats["shard"]
        prefix = f"{name}_" if source.key_prefix == "shard" else ""
        parquet = f"{name}.parquet"
        if parquet in shard_stats.get("outputs", []):
            rows = _parquet_rows(pq.ParquetFile(os.path.join(source.path, parquet)), request)
        else:  # a tar-only output: full records, from the ordinary reader
            from capmill.readers.run_output import RunOutputInput

            reader = RunOutputInput(path=source.path).build()
            tar_shards = tar_shards if tar_shards is not None else {s.name: s for s in reader.shards()}
            rows = ({"key": s.key, "status": s.status, "alt_text": s.alt_text,
                     **{f"score.{k}": s.scores.get(k) for k in request.scores}}
                    for s in reader.read_shard(tar_shards[name]))
        taken = 0
        for row in rows:
            if (per_shard is not None and taken >= per_shard) or _full(request, given):
                break
            if row["status"] != OK:
                continue
            scores = {k: float(row[f"score.{k}"]) for k in request.scores if row.get(f"score.{k}") is not None}
            taken += 1
            given += 1
            yield Sample(key=prefix + row["key"], alt_text=row.get("alt_text"), scores=scores)
        if _full(request, given):
            return


def _parquet_rows(file: Any, request: FitRequest) -> Iterator[dict[str, Any]]:
    present = set(file.schema_arrow.names)
    wanted = ["key", "status"] + (["alt_text"] if request.alt_text else [])
    wanted += [c for c in (f"score.{k}" for k in request.scores) if c in present]
    for batch in file.iter_batches(columns=wanted):
        yield from batch.to_pylist()


def batched(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def image_alt_cosines(scorer: Any, samples: list[Sample]) -> tuple[Any, Any]:
    """(unit image embeddings, image–AltText cosine) for decoded samples; NaN where no AltText."""
    import numpy as np

    from capmill.metrics.embedding import unit_rows

    images = unit_rows(scorer.embed_images([s.image.image for s in samples]))
    with_alt = [i for i, s in enumerate(samples) if s.alt_text and s.alt_text.strip()]
    cos = np.full(len(samples), np.nan)
    if with_alt:
        texts = unit_rows(scorer.embed_texts([samples[i].alt_text for i in with_alt]))
        cos[with_alt] = np.einsum("ij,ij->i", images[with_alt], texts)
    return images, cos
