"""`capmill run`: check the output, plan the shards, set up the stages, claim the output, run.

    chain check ─► input shards and columns ─► output check (refused? locked? writable?)
        ─► plan (capmill.commit.plan) ─► fit step ─► stage setup (models load)
        ─► claim: lock + _run.json + OUT/_fit ─► executor ─► lock released

Nothing is written before the stages are set up: a config, input or model that fails leaves
the output directory as it was (a directory that did not exist is not created).

Shared outputs (`Share`: --cooperate, --shard-index/--num-shards): the lock is a member lease
instead of the exclusive one, the executor claims each shard before processing it
(capmill.commit.claims), `_run.json` is written once, and the fit step runs once, in the first
run, before its claim (the others wait for it and read OUT/_fit).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from capmill.chain import check_chain
from capmill.commit import RunLock, RunPlan, ShardCommitter, plan_run
from capmill.commit.claims import ShardClaims
from capmill.commit.lock import (
    CooperativeLock,
    cooperators_refusal,
    exclusive_holder,
    exclusive_refusal,
    live_cooperators,
)
from capmill.commit.stats import degenerate_reasons
from capmill.config import RunConfig
from capmill.errors import (
    ConfigError,
    OutputAccessError,
    OutputConflictError,
    OutputLockedError,
)
from capmill.executors.base import RunJob
from capmill.fit import run_fit_step, save_fits
from capmill.fit.step import FIT_DIR
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


@dataclass(frozen=True)
class Share:
    """How this run shares its output with other runs (`--cooperate`, `--shard-index/--num-shards`).

    Cooperating runs claim each shard before processing it (capmill.commit.claims); a static
    split also takes only the shards whose position in the input modulo `num_shards` is
    `shard_index`, and implies cooperating (the other parts write into the same output)."""

    cooperate: bool = False
    shard_index: int | None = None
    num_shards: int | None = None

    def __post_init__(self):
        if (self.shard_index is None) != (self.num_shards is None):
            raise ConfigError("--shard-index and --num-shards go together")
        if self.num_shards is not None and not 0 <= self.shard_index < self.num_shards:
            raise ConfigError(f"--shard-index must be in 0..{self.num_shards - 1} for --num-shards {self.num_shards}")

    @property
    def cooperating(self) -> bool:
        return self.cooperate or self.num_shards is not None

    def mine(self, position: int) -> bool:
        return self.num_shards is None or position % self.num_shards == self.shard_index


def run(config: RunConfig, *, force: bool = False, limit: int | None = None, dry_run: bool = False,
        retry_errors: bool = False, progress_stream: TextIO | None = None, progress: bool = True,
        listeners: Sequence[Callable] = (), share: Share | None = None) -> RunSummary:
    """`listeners` are called with (stats, summary) after each committed shard (see RunSummary)."""
    share = share or Share()
    written = check_chain(config).written  # every stage's reads, before anything is read or claimed
    if share.cooperating and force:
        raise ConfigError("--force discards the output's results while other runs may be writing it: run once "
                          "with --force alone, then start the cooperating runs")
    if dry_run:
        return dry_run_report(config, force=force, limit=limit, retry_errors=retry_errors, share=share).summary
    reader = config.input.build()
    reader.check()  # configured columns/fields against the first file
    shards = reader.shards()
    out = OutputDir(config.output.path, config.output.storage_options)
    record = {**new_run_record(config.model_dump(mode="json"), config.hashed_content(), models_of(config)),
              "written": written}
    summary = RunSummary(shards_total=len(shards), listeners=list(listeners))
    # Refuse before any model loads: another config's results, a live run, a read-only folder.
    action = check_output(config, out, record, force, share.cooperating)
    committed = out.records() if action == "resume" else {}
    plan = split(plan_run(reader, shards, committed, limit, retry_errors), shards, share)
    summary.shards_total = len(plan.shards)
    summary.shards_skipped = plan.skipped
    note_kept(config, plan, summary)
    rel = config.reliability
    timing = {"heartbeat_s": rel.lock.heartbeat_s, "stale_after_s": rel.lock.stale_after_s}
    lock = (CooperativeLock if share.cooperating else RunLock)(out.path, **timing, store=out.store)
    claims = ShardClaims(out, committed, **timing) if share.cooperating else None
    bar = Progress(total_shards=len(plan.tasks), stream=progress_stream, enabled=progress)
    executor = config.executor.build()
    ctx = RunContext(out_dir=out.path, image=config.image, seed=config.seed, input=config.input,
                     resuming=action == "resume")
    # Stages that must see the whole input fit once, before any worker is set up (a stored fit of
    # an earlier run of this config is reused); the states reach every worker through ctx.fits.
    fits = fit_once(config, out, ctx, timing) if share.cooperating else run_fit_step(config, out.path, ctx)
    for fitted in fits:
        summary.fits.append(f"{fitted.stage}: {fitted.summary or 'fitted'}{' (reused)' if fitted.reused else ''}")

    def claim() -> ShardCommitter:
        """Take the lock and claim the directory; called by the executor once every stage is set up."""
        try:
            out.store.makedirs(out.path)
        except OSError as e:
            raise access_error(out.path, e) from None
        try:
            lock.acquire()
        except OSError as e:
            raise access_error(out.path, e) from None
        out.prepare(record, force=force, cooperate=share.cooperating)
        save_fits(out.path, fits, ctx.fits, out.store)
        return ShardCommitter(config, out, summary, bar, lock, rel, claims=claims)

    start = time.monotonic()
    try:
        executor.setup(config, ctx)
        executor.run(RunJob(config, reader, plan.tasks, out, summary, bar, claim, claims=claims))
    finally:
        summary.wall_seconds = time.monotonic() - start
        bar.close()
        executor.close()
        if claims is not None:
            claims.release_all()
        lock.release()
    if claims is not None:
        settle_cooperation(config, out, plan, claims, summary)
    return summary


def split(plan: RunPlan, shards: list, share: Share) -> RunPlan:
    """This run's part of the plan under a static split (`--shard-index/--num-shards`)."""
    if share.num_shards is None:
        return plan
    position = {shard.name: i for i, shard in enumerate(shards)}
    plan.shards = [s for s in plan.shards if share.mine(position[s.name])]
    plan.tasks = [t for t in plan.tasks if share.mine(position[t.shard.name])]
    plan.kept = {name: stats for name, stats in plan.kept.items() if share.mine(position[name])}
    return plan


def settle_cooperation(config: RunConfig, out: OutputDir, plan: RunPlan, claims: ShardClaims,
                       summary: RunSummary) -> None:
    """A cooperating run's verdict covers its part of the output as it stands at its end: shards
    the others committed meanwhile count as kept (their degenerate or retryable results keep the
    exit code non-zero), shards still claimed by live runs are named."""
    mine = {s.name for s in plan.shards}
    records = {name: stats for name, stats in out.records().items() if name in mine}
    summary.shards_elsewhere = len((claims.elsewhere | claims.done_elsewhere) - set(summary.failed_shards))
    kept = RunPlan(plan.shards, [], records)
    note_kept(config, kept, summary)
    running = sorted(n for n in claims.elsewhere if n not in records)
    if running:
        summary.warnings.append(f"{len(running)} shard(s) still in progress in cooperating runs: "
                                f"{', '.join(running[:10])}{' …' if len(running) > 10 else ''}")


def fit_once(config: RunConfig, out: OutputDir, ctx: RunContext, timing: dict) -> list:
    """The fit step of cooperating runs: computed once, by the first; the others wait for it
    and read what it stored in OUT/_fit (a fit lease serialises them; one of a dead run is
    taken over). Stored at once rather than at claim, so the others find it."""
    if not any(stage_config.build().needs_fit for stage_config in config.stages):
        return []
    from capmill.commit.lock import Lease

    try:
        out.makedirs(FIT_DIR)
    except OSError as e:
        raise access_error(out.path, e) from None
    lease = Lease(out.join(FIT_DIR, ".lease.json"), mode="fit", **timing, store=out.store)
    waited = False
    while True:
        try:
            lease.acquire()
            break
        except OutputLockedError:
            if not waited:
                logging.getLogger("capmill").info("waiting for a cooperating run's fit step")
                waited = True
            time.sleep(0.5)
    try:
        fits = run_fit_step(config, out.path, ctx)
        save_fits(out.path, fits, ctx.fits, out.store)
    finally:
        lease.release()
    return fits


def check_output(config: RunConfig, out: OutputDir, record: dict, force: bool, cooperate: bool = False) -> str:
    """What `prepare` would do with the directory ("new", "resume", "discard"), or the error it
    would raise; a live lock (or for a lone run, live cooperating runs) and a directory that
    cannot be written are refused too."""
    action = out.check(record, force)
    stale = config.reliability.lock.stale_after_s
    if out.store.isdir(out.path):
        holder = exclusive_holder(out.path, stale, write_probe=False, store=out.store)
        if holder is not None:
            raise OutputLockedError(exclusive_refusal(out.path, holder) if cooperate
                                    else RunLock(out.path, stale_after_s=stale).refusal(holder))
        members = [] if cooperate else live_cooperators(out.path, stale, write_probe=False, store=out.store)
        if members:
            raise OutputLockedError(cooperators_refusal(out.path, members))
    if not out.local:
        return action  # an object store says what it refuses when written
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
                   retry_errors: bool = False, share: Share | None = None) -> DryRun:
    from capmill.backends.availability import config_models

    check_chain(config)
    for stage_cfg in config.stages:  # config errors surface; nothing loads
        stage_cfg.build()
    reader = config.input.build()
    reader.check()
    shards = reader.shards()
    report = DryRun(config, RunSummary(shards_total=len(shards)), models=config_models(config))
    out = OutputDir(config.output.path, config.output.storage_options)
    record = new_run_record(config.model_dump(mode="json"), config.hashed_content(), models_of(config))
    try:
        action = check_output(config, out, record, force, share is not None and share.cooperating)
    except (OutputConflictError, OutputAccessError) as e:
        report.refused = str(e)
        return report
    committed = out.records() if action == "resume" else {}
    report.output = {
        "new": f"{out.path} would be created" if not out.store.exists(out.path) else f"{out.path} is empty: a new output",
        "resume": f"{out.path} resumes: {len(committed)} shard(s) committed by earlier runs",
        "discard": f"{out.path} holds another config's results: --force would discard them",
    }[action]
    report.plan = split(plan_run(reader, shards, committed, limit, retry_errors), shards, share or Share())
    report.summary.shards_skipped = report.plan.skipped
    return report
