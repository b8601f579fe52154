"""The fit step: run once per run, before streaming, by `capmill run` (see `capmill.run`).

    for each stage with `needs_fit`:
        key = TYPE-HASH(stage config without resources, the input it fits on, the run's seed)
        OUT/_fit/KEY.json exists? ─ yes ─► reuse it (a resumed run gets the same fit)
                     │ no
                     ▼
        read what the stage's FitRequest asks for (capmill.fit.samples)
        state = stage.fit(ctx, samples)  → OUT/_fit/KEY.json (temporary name, then renamed;
                                           one PUT on an object store)

Every worker receives the state in `Stage.setup` through `RunContext.fitted`, which finds it by
the same key: from `RunContext.fits` when the caller handed the states over in memory, else from
the file (on Ray, every actor reads the one file the driver wrote). No stage reads the input.
A changed stage config or input gives another key, so a stale fit is never picked up.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from capmill.fit.samples import fit_samples, fit_source

if TYPE_CHECKING:
    from capmill.config import RunConfig
    from capmill.stages.base import Stage
    from capmill.writers.store import Store

FIT_DIR = "_fit"


@dataclass
class FitRecord:
    """What the fit step did for one stage, for the run summary."""

    stage: str  # "INDEX:TYPE"
    key: str
    reused: bool
    seconds: float
    summary: str | None  # the stage's one-line account of its fit (e.g. TL;DR's retention)


def fit_key(stage: Stage, run_input: Any, seed: int) -> str:
    """The fit's identity: the stage config (resources left out: they change speed, not
    results), the input it fits on, and the run's seed."""
    from capmill.outputdir import config_hash

    source = fit_source(stage.fit_request(), run_input)
    identity = {"stage": stage.config.model_dump(mode="json", exclude={"resources"}),
                "input": source.model_dump(mode="json"), "seed": seed}
    return f"{stage.config.type}-{config_hash(identity)}"


def fit_path(out_dir: str, key: str) -> str:
    return os.path.join(out_dir, FIT_DIR, f"{key}.json")


def _store(out_dir: str, store: Store | None) -> Store:
    from capmill.writers.store import store_for

    return store if store is not None else store_for(out_dir)


def load_fit(out_dir: str, key: str, store: Store | None = None) -> dict[str, Any] | None:
    """The stored fit of `key`, None when there is none (`store`: the output's, for an object
    store that needs its storage options)."""
    store = _store(out_dir, store)
    path = fit_path(out_dir, key)
    if not store.exists(path):
        return None
    return store.read_json(path)


def save_fit(out_dir: str, key: str, state: dict[str, Any], store: Store | None = None) -> str:
    """Write the state whole or not at all: under a temporary name, then renamed (a killed fit
    leaves nothing that counts; `OutputDir.prepare` removes the temporary on the next start); on
    an object store in one PUT."""
    from capmill.writers.base import tmp_name

    store = _store(out_dir, store)
    path = fit_path(out_dir, key)
    if not store.local:
        store.write_bytes(path, json.dumps(state, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = tmp_name(os.path.dirname(path), os.path.basename(path))
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, ensure_ascii=False, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def fit_stage(stage: Stage, ctx: Any) -> dict[str, Any]:
    """Compute one stage's fit: read what it asks for, call `stage.fit`, close its models."""
    request = stage.fit_request()
    samples = fit_samples(request, fit_source(request, ctx.input), ctx.image)
    try:
        return stage.fit(ctx, samples)
    finally:
        stage.teardown()


def run_fit_step(config: RunConfig, out_dir: str, ctx: Any = None,
                 logger: logging.Logger | None = None) -> list[FitRecord]:
    """Fit every stage that needs it, or reuse its stored fit, into `ctx.fits` (a new RunContext
    when None). Nothing is written: `save_fits` stores the new states once the run has claimed its
    output, so a fit that fails, or a run refused after it, leaves the output directory as it was.
    Returns one record per such stage."""
    from capmill.stages.base import RunContext

    logger = logger or logging.getLogger("capmill")
    if ctx is None:
        ctx = RunContext(out_dir=out_dir, image=config.image, seed=config.seed, input=config.input, logger=logger)
    from capmill.writers.store import store_for

    store = store_for(out_dir, config.output.storage_options)
    records = []
    for index, stage_config in enumerate(config.stages):
        stage = stage_config.build()
        if not stage.needs_fit:
            continue
        key = fit_key(stage, config.input, config.seed)
        start = time.monotonic()
        state = load_fit(out_dir, key, store)
        reused = state is not None
        if state is None:
            logger.info("fitting %s on the whole input before the run", stage_config.type)
            state = fit_stage(stage, ctx)
        ctx.fits[key] = state
        records.append(FitRecord(f"{index}:{stage_config.type}", key, reused, time.monotonic() - start,
                                 stage.fit_summary(state)))
    return records


def save_fits(out_dir: str, records: list[FitRecord], fits: dict[str, Any], store: Store | None = None) -> None:
    """Store every fitted state of `records` that OUT/_fit/ does not hold yet (reruns reuse them)."""
    store = _store(out_dir, store)
    for record in records:
        if not store.exists(fit_path(out_dir, record.key)):
            save_fit(out_dir, record.key, fits[record.key], store)
