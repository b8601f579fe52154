"""The fit pass of two-pass stages (`align_bin`, `tldr`): see the data once before streaming.

The executors stream, so a stage whose decision depends on the whole dataset (bin edges over
every cosine, clusters over every image) fits in its `setup`:

    setup ─► fitted file in OUT/_fit/ for this stage config? ─ yes ─► load it
                              │ no
                              ▼
             read the run's input (RunContext.input), or the stage's own `fit_input`,
             spread evenly over the shards, decode, compute → write OUT/_fit/NAME-HASH.json

The file name carries a hash of the stage config and the input it fitted on, so a resumed run
reuses the same fit (same output as an uninterrupted run) and a changed config never picks up a
stale one. On Ray every actor's `setup` finds the file the first one wrote; two actors fitting at
once compute the same deterministic result and the atomic rename keeps one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

from capmill.errors import ConfigError
from capmill.outputdir import config_hash, write_json_atomic
from capmill.sample import Sample
from capmill.stages.base import RunContext

FIT_DIR = "_fit"


def fit_input_config(ctx: RunContext, override: Any) -> Any:
    """The input to fit on: the stage's own `fit_input` when given, else the run's."""
    chosen = override if override is not None else ctx.input
    if chosen is None:
        raise ConfigError(
            "this stage fits on the data before the run, but the executor passed no input to fit on; "
            "give the stage a `fit_input` (any input section, e.g. {type: capmill, path: OUT_OF_AN_EARLIER_RUN})"
        )
    return chosen


def load_or_fit(ctx: RunContext, name: str, identity: dict[str, Any], fit: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The fitted state for (`name`, `identity`): from ctx.state, OUT/_fit, or `fit()` (then saved)."""
    digest = config_hash(identity)
    cache_key = f"{name}-{digest}"
    if cache_key in ctx.state:
        return ctx.state[cache_key]
    path = os.path.join(ctx.out_dir, FIT_DIR, f"{cache_key}.json") if ctx.out_dir else None
    if path is not None and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    else:
        state = fit()
        if path is not None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_json_atomic(path, state)
    ctx.state[cache_key] = state
    return state


def fit_samples(ctx: RunContext, input_config: Any, max_samples: int | None, decode: bool = True) -> Iterator[Sample]:
    """Up to `max_samples` ok samples of the input, taken evenly from every shard in shard order
    (deterministic, so a refit gives the same result), images decoded when `decode`."""
    from capmill.media.decode import decode_one
    from capmill.media.image import ImageConfig

    reader = input_config.build()
    shards = reader.shards()
    per_shard = None if max_samples is None else max(1, math.ceil(max_samples / max(len(shards), 1)))
    image_config = ctx.image or ImageConfig()
    given = 0
    for shard in shards:
        taken = 0
        for sample in reader.read(shard):
            if (per_shard is not None and taken >= per_shard) or (max_samples is not None and given >= max_samples):
                break
            if decode and sample.ok:
                decode_one(sample, image_config)
            if not sample.ok:
                continue
            taken += 1
            given += 1
            yield sample
        if max_samples is not None and given >= max_samples:
            return


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
