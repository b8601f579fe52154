"""`capmill run`: plan the shards, claim the output directory, hand the rest to the executor."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TextIO

from capmill.chain import check_chain
from capmill.config import RunConfig
from capmill.fit import run_fit_step
from capmill.outputdir import OutputDir, new_run_record
from capmill.progress import Progress, RunSummary


def models_of(config: RunConfig) -> dict[str, list[str]]:
    """Every model the run will load, per stage (`"0:caption"` → ids)."""
    out: dict[str, list[str]] = {}
    for i, stage in enumerate(config.stages):
        ids = [m for backend in stage.backends() for m in backend.model_ids()]
        if ids:
            out[f"{i}:{stage.type}"] = ids
    return out


def run(config: RunConfig, *, force: bool = False, limit: int | None = None, dry_run: bool = False,
        progress_stream: TextIO | None = None, progress: bool = True, listeners: Sequence[Callable] = ()) -> RunSummary:
    """`listeners` are called with (stats, summary) after each committed shard (see RunSummary)."""
    written = check_chain(config).written  # every stage's reads, before anything is read or claimed
    reader = config.input.build()
    reader.check()  # configured columns/fields against the first file, before anything is claimed
    shards = reader.shards()
    out = OutputDir(config.output.path)
    hashed = {**config.hashed_content(), "limit": limit}
    record = {**new_run_record(config.model_dump(mode="json"), hashed, models_of(config)), "written": written}
    summary = RunSummary(shards_total=len(shards), listeners=list(listeners))
    if dry_run:
        # Build every stage so config errors surface, but load nothing and write nothing.
        for stage_cfg in config.stages:
            stage_cfg.build()
        return summary
    out.prepare(record, force=force)
    # Stages that must see the whole input fit once here, before any worker starts; their states
    # land in OUT/_fit/, where every worker's setup finds them, and a resumed run reuses them.
    for fitted in run_fit_step(config, out.path):
        summary.fits.append(f"{fitted.stage}: {fitted.summary or 'fitted'}{' (reused)' if fitted.reused else ''}")
    done = out.committed()
    pending = [s for s in shards if s.name not in done]
    summary.shards_skipped = len(shards) - len(pending)
    bar = Progress(total_shards=len(pending), stream=progress_stream, enabled=progress)
    start = time.monotonic()
    try:
        config.executor.build().run(config, reader, pending, out, summary, bar, limit=limit)
    finally:
        summary.wall_seconds = time.monotonic() - start
        bar.close()
    return summary
