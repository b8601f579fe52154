"""`capmill run`: check the output, plan the shards, set up the stages, claim the output, run.

    chain check ─► input shards and columns ─► output check (refused? locked? writable?)
        ─► plan (capmill.commit.plan) ─► fit step ─► stage setup (models load)
        ─► claim: lock + _run.json + OUT/_fit ─► executor ─► lock released

Nothing is written before the stages are set up: a config, input or model that fails leaves
the output directory as it was (a directory that did not exist is not created).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from capmill.chain import check_chain
from capmill.commit import RunLock, RunPlan, ShardCommitter, plan_run
from capmill.commit.stats import degenerate_reasons
from capmill.config import RunConfig
from capmill.errors import OutputAccessError, OutputConflictError, OutputLockedError
from capmill.executors.base import RunJob
from capmill.fit import run_fit_step, save_fits
from capmill.outputdir import OutputDir, access_error, new_run_record, writable_problem
from capmill.progress import Progress, RunSummary
from capmill.stages.base import RunContext


def models_of(config: RunConfig) -> dict[str, list[str]]:
    """Every model the run will load, per stage (`"0:caption"` → ids)."""
    out: dict[str, list[str]] = {}
    for i, stage in enumerate(config.stages):
        ids = [m for backend in stage.backends() for m in backend.model_ids()]
        if ids:
            out[f"{i}:{stage.type}"] = ids
    return out


def run(config: RunConfig, *, force: bool = False, limit: int | None = None, dry_run: bool = False,
        retry_errors: bool = False, progress_stream: TextIO | None = None, progress: bool = True,
        listeners: Sequence[Callable] = ()) -> RunSummary:
    """`listeners` are called with (stats, summary) after each committed shard (see RunSummary)."""
    written = check_chain(config).written  # every stage's reads, before anything is read or claimed
    if dry_run:
        return dry_run_report(config, force=force, limit=limit, retry_errors=retry_errors).summary
    reader = config.input.build()
    reader.check()  # configured columns/fields against the first file
    shards = reader.shards()
    out = OutputDir(config.output.path)
    record = {**new_run_record(config.model_dump(mode="json"), config.hashed_content(), models_of(config)),
              "written": written}
    summary = RunSummary(shards_total=len(shards), listeners=list(listeners))
    # Refuse before any model loads: another config's results, a live run, a read-only folder.
    action = check_output(config, out, record, force)
    plan = plan_run(reader, shards, out.records() if action == "resume" else {}, limit, retry_errors)
    summary.shards_skipped = plan.skipped
    note_kept(config, plan, summary)
    rel = config.reliability
    lock = RunLock(out.path, heartbeat_s=rel.lock.heartbeat_s, stale_after_s=rel.lock.stale_after_s)
    bar = Progress(total_shards=len(plan.tasks), stream=progress_stream, enabled=progress)
    executor = config.executor.build()
    ctx = RunContext(out_dir=out.path, image=config.image, seed=config.seed, input=config.input,
                     resuming=action == "resume")
    # Stages that must see the whole input fit once, before any worker is set up (a stored fit of
    # an earlier run of this config is reused); the states reach every worker through ctx.fits.
    fits = run_fit_step(config, out.path, ctx)
    for fitted in fits:
        summary.fits.append(f"{fitted.stage}: {fitted.summary or 'fitted'}{' (reused)' if fitted.reused else ''}")

    def claim() -> ShardCommitter:
        """Take the lock and claim the directory; called by the executor once every stage is set up."""
        try:
            os.makedirs(out.path, exist_ok=True)
        except OSError as e:
            raise access_error(out.path, e) from None
        try:
            lock.acquire()
        except OSError as e:
            raise access_error(out.path, e) from None
        out.prepare(record, force=force)
        save_fits(out.path, fits, ctx.fits)
        return ShardCommitter(config, out, summary, bar, lock, rel)

    start = time.monotonic()
    try:
        executor.setup(config, ctx)
        executor.run(RunJob(config, reader, plan.tasks, out, summary, bar, claim))
    finally:
        summary.wall_seconds = time.monotonic() - start
        bar.close()
        executor.close()
        lock.release()
    return summary


def check_output(config: RunConfig, out: OutputDir, record: dict, force: bool) -> str:
    """What `prepare` would do with the directory ("new", "resume", "discard"), or the error it
    would raise; a live lock and a directory that cannot be written are refused too."""
    action = out.check(record, force)
    lock = RunLock(out.path, stale_after_s=config.reliability.lock.stale_after_s)
    holder = lock.holder(write_probe=False) if os.path.isdir(out.path) else None
    if holder is not None and holder.alive:
        raise OutputLockedError(lock.refusal(holder))
    problem = writable_problem(out.path)
    if problem is not None:
        raise OutputAccessError(f"cannot write to output directory {out.path!r}: {problem}; choose a writable output.path")
    return action


def note_kept(config: RunConfig, plan: RunPlan, summary: RunSummary) -> None:
    """Shards this run leaves as they are still count for its verdict: retryable samples and
    degenerate results committed earlier keep the exit code non-zero until fixed."""
    rel = config.reliability
    for stats in plan.kept.values():
        summary.note_committed(stats, degenerate_reasons(stats, rel.fail_at_fallback_share, rel.fail_at_drop_share))


# ---- --dry-run -------------------------------------------------------------------------------


@dataclass
class DryRun:
    """What `capmill run --dry-run` found; loads no model, writes nothing."""

    config: RunConfig
    summary: RunSummary
    output: str = ""  # what would happen to the output directory
    refused: str | None = None  # why the run would be refused (exit 2)
    models: list[tuple[str, str, str, str, bool | None]] = field(default_factory=list)
    plan: RunPlan | None = None

    @property
    def models_missing(self) -> list[str]:
        return [m for _, _, m, _, offline in self.models if offline is False]

    def to_dict(self) -> dict:
        """The report as `capmill run --dry-run --json` prints it."""
        cfg, tasks = self.config, (self.plan.tasks if self.plan else [])
        return {"dry_run": True, "shards_total": self.summary.shards_total, "input": cfg.input.type,
                "stages": len(cfg.stages), "output": cfg.output.path, "output_action": self.output or None,
                "refused": self.refused,
                "models": [{"stage": s, "backend": b, "model": m, "where": w, "offline": o} for s, b, m, w, o in self.models],
                "would_process": [{"shard": t.shard.name, "cap": t.cap, "retry": t.retry} for t in tasks],
                "already_committed": self.plan.skipped if self.plan else 0}

    def render(self, show: int = 20) -> str:
        from capmill.backends.availability import fetch_hint

        cfg = self.config
        lines = [f"config OK: {self.summary.shards_total} shard(s) to read from {cfg.input.type} input, "
                 f"{len(cfg.stages)} stage(s), output {cfg.output.path}"]
        for stage, backend, model, where, offline in self.models:
            state = {True: "available offline", False: "NOT available offline", None: "served by the backend"}[offline]
            lines.append(f"  model {model} ({stage}, {backend}): {state}" + (f" [{where}]" if offline else ""))
        for model in self.models_missing:
            lines.append(f"  {model}: {fetch_hint(model)}")
        if self.refused:
            lines.append(f"output: REFUSED: {self.refused}")
            return "\n".join(lines)
        lines.append(f"output: {self.output}")
        tasks = self.plan.tasks if self.plan else []
        names = [t.shard.name + (f" (first {t.cap})" if t.cap is not None else "") + (" (retry)" if t.retry else "")
                 for t in tasks]
        more = f" … and {len(names) - show} more" if len(names) > show else ""
        lines.append(f"would process {len(names)} shard(s)" + (f": {', '.join(names[:show])}{more}" if names else "")
                     + (f"; {self.plan.skipped} already committed" if self.plan and self.plan.skipped else ""))
        return "\n".join(lines)


def dry_run_report(config: RunConfig, *, force: bool = False, limit: int | None = None,
                   retry_errors: bool = False) -> DryRun:
    from capmill.backends.availability import config_models

    check_chain(config)
    for stage_cfg in config.stages:  # config errors surface; nothing loads
        stage_cfg.build()
    reader = config.input.build()
    reader.check()
    shards = reader.shards()
    report = DryRun(config, RunSummary(shards_total=len(shards)), models=config_models(config))
    out = OutputDir(config.output.path)
    record = new_run_record(config.model_dump(mode="json"), config.hashed_content(), models_of(config))
    try:
        action = check_output(config, out, record, force)
    except (OutputConflictError, OutputAccessError) as e:
        report.refused = str(e)
        return report
    committed = out.records() if action == "resume" else {}
    report.output = {
        "new": f"{out.path} would be created" if not os.path.exists(out.path) else f"{out.path} is empty: a new output",
        "resume": f"{out.path} resumes: {len(committed)} shard(s) committed by earlier runs",
        "discard": f"{out.path} holds another config's results: --force would discard them",
    }[action]
    report.plan = plan_run(reader, shards, committed, limit, retry_errors)
    report.summary.shards_skipped = report.plan.skipped
    return report
