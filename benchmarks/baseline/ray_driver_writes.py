"""BASELINE for benchmarks/scale_out.py: the Ray executor as it was before shard owners, when the
driver wrote and committed every shard (all commits arriving at the end). Kept only to measure the
driver's CPU per sample against the current executor in the same run; not part of capmill.

Execution on a Ray cluster, with the same records and the same commit protocol as a local run.

    driver: one row per pending shard
        │  read (Ray tasks, one per shard, in parallel)     → sample rows + one end row per shard
        ▼
    decode + hygiene (Ray tasks)                           → rows with decoded pixels
        ▼
    stage 1 … stage N (one actor pool per stage, sized by its `resources`)
        ▼
    driver: rows back in shard order → the shared commit protocol (capmill.commit)

The driver claims the output directory when the first row comes back (every stage has then
been set up in a worker, so a setup failure leaves the directory as it was). It is the only
writer. It keeps, per shard, the next position to write and the rows that came early; rows are
written in reader order, so a shard's files are the same bytes a local run writes, and the shard
is committed once its end row has come and every position before it is written. Rows seen twice
(a task Ray retried after a worker died) are skipped by position, so a shard is never committed
twice or half.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from capmill.commit import KeyRegistry, ShardCommitter, ShardState, ShardStats, ShardTask
from capmill.components import Strict
from capmill.errors import CapmillError, CircuitOpenError, ConfigError, SetupError
from ray_rows_v1 import StageWorker, decode_rows, read_shards, row_sample, row_trail
from capmill.sample import Sample

if TYPE_CHECKING:
    from capmill.config import RunConfig
    from capmill.executors.base import RunJob
    from capmill.stages.base import RunContext

INSTALL_HINT = "the Ray executor needs Ray Data: install it with `pip install 'capmill[ray]'`"


class RayExecutorConfig(Strict):
    type: Literal["ray"] = "ray"
    # Cluster to join: "auto" (the cluster this machine belongs to), "HOST:6379", or a Ray Client
    # address "ray://HOST:10001". None starts a private local cluster bound to 127.0.0.1 (no
    # dashboard, no usage stats) and stops it when the run ends.
    address: str | None = None
    # Runtime environment for the workers (pip, env_vars, working_dir, ...), passed to ray.init.
    # Workers of an existing cluster need capmill importable: install it on the nodes, or name it
    # here, e.g. {pip: ["capmill[transformers]"]}.
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    # Samples per stage call, as in a local run.
    batch_size: int = Field(16, ge=1)
    # CPUs per read/decode task.
    decode_cpus: float = Field(1.0, gt=0)
    # Local cluster only: CPUs and GPUs it offers (None: the machine's, and at least what the
    # stages' actor pools reserve, so a pipeline of many one-CPU stages still starts on a laptop)
    # and the object store size (None: Ray's default, 30% of memory).
    num_cpus: int | None = Field(None, ge=1)
    num_gpus: int | None = Field(None, ge=0)
    object_store_memory_gb: float | None = Field(None, gt=0)
    # A stage actor that dies (OOM, SIGKILL, node lost) is restarted this many times and its
    # batches are retried; -1 is unlimited, Ray Data's own default.
    max_restarts: int = Field(-1, ge=-1)
    max_task_retries: int = Field(-1, ge=-1)
    # Fail a shard whose keys were already seen in another shard of this output.
    check_duplicate_keys: bool = True

    def build(self) -> RayExecutor:
        return RayExecutor(self)


def import_ray():
    """Import Ray, or say how to install it. Never falls back to the local executor."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise SetupError(f"{INSTALL_HINT} ({e})") from None
    return ray


@contextmanager
def _loopback_node():
    """While starting or joining a cluster on 127.0.0.1, keep Ray from replacing the loopback
    address by the machine's routable one. Ray does so unless this switch (its
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER setting, read when Ray is imported) is off; with it off
    every server of a private cluster listens on 127.0.0.1 only, and a second driver on the same
    machine reaches it there."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def start_local_cluster(num_cpus: int | None = None, num_gpus: int | None = None,
                        object_store_memory_gb: float | None = None, log_to_driver: bool = True) -> None:
    """A private single-node cluster on 127.0.0.1 without dashboard; `ray.shutdown()` stops it."""
    ray = import_ray()
    with _loopback_node():
        ray.init(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            object_store_memory=int(object_store_memory_gb * 1024**3) if object_store_memory_gb else None,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=log_to_driver,
            configure_logging=False,
        )
    address = ray.get_runtime_context().gcs_address
    if not address.startswith("127.0.0.1:"):
        ray.shutdown()
        raise SetupError(f"the local Ray cluster did not bind to 127.0.0.1 (it took {address}); "
                         f"start one yourself and pass its address as executor.address")


def join_cluster(address: str, runtime_env: dict[str, Any] | None = None) -> None:
    ray = import_ray()
    host = address.removeprefix("ray://").rsplit(":", 1)[0]
    loopback = _loopback_node() if host in ("127.0.0.1", "localhost") else nullcontext()
    with loopback:
        ray.init(address=address, runtime_env=runtime_env or None, configure_logging=False)


@dataclass
class _Pending:
    """A shard being put back in order on the driver."""

    state: ShardState
    next: int = 0  # the next position to write
    early: dict[int, dict[str, Any]] = field(default_factory=dict)  # position → row that came early
    total: int | None = None  # set by the end row
    done: bool = False


class RayExecutor:
    def __init__(self, config: RayExecutorConfig):
        self.config = config
        self.context: dict[str, Any] = {}

    def setup(self, run: RunConfig, ctx: RunContext) -> None:
        """Config errors surface here; models load in the stage actors, once the run starts."""
        for stage_cfg in run.stages:
            stage_cfg.build()
        self.context = {"out_dir": ctx.out_dir, "image": ctx.image, "seed": ctx.seed, "input": ctx.input,
                        "resuming": ctx.resuming, "fits": ctx.fits}

    def close(self) -> None:
        pass

    def run(self, job: RunJob):
        ray = import_ray()
        if any(task.retry for task in job.tasks):
            raise ConfigError("--retry-errors rewrites committed shards with the local executor for now: "
                              "run it with `--set executor='{type: local}'` (executor settings are not part of "
                              "the config hash, so the output stays the same)")
        if not job.tasks:
            job.claim()
            return job.summary
        started = self._connect(ray, job.config)
        try:
            self._check_capacity(ray, job.config)
            self._run(ray, job)
        finally:
            if started:
                ray.shutdown()
        return job.summary

    def _connect(self, ray, run: RunConfig) -> bool:
        """Join or start a cluster; True when this run did (and so must shut it down)."""
        cfg = self.config
        if ray.is_initialized():  # the caller manages the cluster (notebooks, tests)
            return False
        if cfg.address is not None:
            join_cluster(cfg.address, cfg.runtime_env)
            return True
        num_cpus = cfg.num_cpus or max(os.cpu_count() or 1, math.ceil(self._cpus_needed(run)))
        start_local_cluster(num_cpus, cfg.num_gpus, cfg.object_store_memory_gb)
        return True

    def _cpus_needed(self, run: RunConfig) -> float:
        """Every stage's actor pool at full size, plus one read/decode task."""
        return self.config.decode_cpus + sum(s.resources.cpus * s.resources.concurrency for s in run.stages)

    def _check_capacity(self, ray, run: RunConfig) -> None:
        # Actor pools hold their CPUs for the whole run: with fewer CPUs than the pools and one
        # read/decode task need, Ray Data waits for resources that never come.
        total = ray.cluster_resources().get("CPU", 0.0)
        needed = self._cpus_needed(run)
        if total < needed:
            logging.getLogger("capmill").warning(
                "the Ray cluster offers %s CPUs but the stages' actor pools and one read/decode task need %s; "
                "the run waits until the cluster grows (lower stages' resources.cpus or concurrency, or add nodes)",
                total, needed)

    def _dataset(self, ray, run: RunConfig, work: list[ShardTask]):
        cfg = self.config
        caps = {i: task.cap for i, task in enumerate(work) if task.cap is not None}
        reencode = run.output.reencode is not None
        ds = ray.data.from_items([{"shard": i} for i in range(len(work))], override_num_blocks=len(work))
        ds = ds.map_batches(read_shards, batch_size=1, batch_format="pyarrow", num_cpus=cfg.decode_cpus,
                            fn_kwargs={"input_config": run.input, "shards": [t.shard for t in work], "caps": caps,
                                       "rows_per_block": cfg.batch_size})
        ds = ds.map_batches(decode_rows, batch_size=cfg.batch_size, batch_format="pyarrow", num_cpus=cfg.decode_cpus,
                            fn_kwargs={"image_config": run.image, "keep_pixels": bool(run.stages) or reencode})
        # Given explicitly (Ray Data's generic remote arguments), these actor-only settings also
        # keep Ray Data from fusing the read/decode tasks into the first stage's actors, where
        # decoding would run only as wide as that stage's pool.
        retries = {"max_restarts": cfg.max_restarts, "max_task_retries": cfg.max_task_retries}
        stage_context = self.context or {"out_dir": run.output.path, "image": run.image, "seed": run.seed,
                                         "input": run.input}
        for i, stage_cfg in enumerate(run.stages):
            res = stage_cfg.resources
            last = i == len(run.stages) - 1
            with warnings.catch_warnings():  # the generic remote arguments are deprecated after 2.60
                warnings.simplefilter("ignore", DeprecationWarning)
                ds = ds.map_batches(
                    StageWorker,
                    fn_constructor_kwargs={"stage_config": stage_cfg, "context": stage_context,
                                           "keep_pixels": reencode or not last,
                                           "breaker_after": run.reliability.breaker_after},
                    compute=ray.data.ActorPoolStrategy(size=res.concurrency),
                    batch_size=cfg.batch_size,
                    batch_format="pyarrow",
                    num_cpus=res.cpus,
                    num_gpus=res.gpus or None,
                    memory=res.memory_gb * 1024**3 if res.memory_gb else None,
                    **retries,
                )
        return ds

    def _run(self, ray, job: RunJob) -> None:
        run, summary = job.config, job.summary
        shards = [_Pending(ShardState(task, ShardStats(task.shard.name))) for task in job.tasks]
        for p in shards:
            p.state.stats.seconds["read"] = 0.0  # first in the summary, as in a local run
        writer = _OrderedWriter(job, self.config.check_duplicate_keys, with_pixels=run.output.reencode is not None)
        context = ray.data.DataContext.get_current()
        saved = context.enable_progress_bars, context.raise_original_map_exception
        context.enable_progress_bars = False  # capmill's own bar reports the run
        # A stage's SetupError reaches the driver as itself (not a UserCodeException wrapping
        # its text), so the run fails with the error's advice, as a local run does.
        context.raise_original_map_exception = True
        try:
            for block in self._dataset(ray, run, job.tasks).iter_batches(batch_size=None, batch_format="pyarrow"):
                for row in block.to_pylist():
                    writer.add(shards[row["shard"]], row)
                if writer.committer is not None and writer.committer.stopped:
                    summary.stopped = writer.committer.stopped
                    break
        except BaseException as e:
            writer.abort_all(shards)
            if isinstance(e, KeyboardInterrupt):
                summary.interrupted = True
                raise
            cause = _capmill_cause(e)
            if isinstance(cause, CircuitOpenError):  # the backend is down: stop, keep what is committed
                summary.stopped = str(cause)
                writer.defer_unfinished(shards)
                return
            if cause is not None:  # a stage's setup or config error, raised in a worker
                raise cause from None
            raise
        finally:
            context.enable_progress_bars, context.raise_original_map_exception = saved
        if summary.stopped:
            writer.abort_all(shards)
            writer.defer_unfinished(shards)
            return
        for p in shards:
            if not p.done:  # cannot happen unless Ray lost rows; never commit such a shard
                writer.abort(p)
                summary.failed_shards[p.state.shard.name] = (
                    f"{p.state.shard.source}: incomplete: {p.next} of {p.total} samples came back from Ray")


class _OrderedWriter:
    """Writes each shard's rows in reader order as they come back, commits complete shards."""

    def __init__(self, job: RunJob, check_keys: bool, with_pixels: bool):
        self.job = job
        self.check_keys = check_keys
        self.keys: KeyRegistry | None = None
        self.with_pixels = with_pixels
        self.committer: ShardCommitter | None = None

    def _claim(self) -> ShardCommitter:
        """The first row back has passed every stage: their setup succeeded, claim the output."""
        if self.committer is None:
            self.committer = self.job.claim()
            if self.check_keys:
                self.keys = KeyRegistry(self.job.out.committed_keys())
        return self.committer

    def add(self, p: _Pending, row: dict[str, Any]) -> None:
        self._claim()
        if p.done:
            return  # a failed shard's late rows
        if row["end"]:
            if p.total is not None:
                return  # a retried read task's second end row
            if row["error"] is not None:
                self._fail(p, row["error"])
                return
            p.total = row["index"]
            p.state.stats.partial = bool(row["partial"])
            p.state.stats.merge_seconds(_seconds(row))
        elif row["index"] >= p.next and row["index"] not in p.early:  # else seen already: a retried task
            p.early[row["index"]] = row
        self._flush(p)

    def _flush(self, p: _Pending) -> None:
        ready: list[Sample] = []
        trails: list[list[str]] = []
        while p.next in p.early:
            row = p.early.pop(p.next)
            p.next += 1
            p.state.stats.merge_seconds(_seconds(row))
            ready.append(row_sample(row, with_pixels=self.with_pixels))
            trails.append(row_trail(row))
        if ready and p.state.error is None:
            try:
                if self.keys is not None:
                    for sample in ready:
                        self.keys.claim(sample.key, p.state.shard)
                self.committer.write(p.state, ready, trails)
            except Exception as e:  # duplicate key, disk full: this shard fails, others go on
                p.state.error = e
        if ready:
            self.job.progress.advance(samples=len(ready))
        if p.total is not None and p.next == p.total:
            p.done = True
            self.committer.finish(p.state)

    def _fail(self, p: _Pending, reason: str) -> None:
        p.done = True
        self.abort(p)
        self.job.summary.failed_shards[p.state.shard.name] = f"{p.state.shard.source}: {reason}"

    def abort(self, p: _Pending) -> None:
        if self.committer is not None:
            self.committer.abort(p.state)

    def abort_all(self, shards: list[_Pending]) -> None:
        for p in shards:
            if not p.state.committed:
                self.abort(p)

    def defer_unfinished(self, shards: list[_Pending]) -> None:
        summary = self.job.summary
        for p in shards:
            name = p.state.shard.name
            if not p.state.committed and name not in summary.failed_shards:
                summary.deferred_shards.setdefault(name, f"{p.state.shard.source}: not committed: the run stopped")


def _seconds(row: dict[str, Any]) -> dict[str, float]:
    return json.loads(row["seconds"] or "{}")


def _capmill_cause(error: BaseException) -> CapmillError | None:
    """The CapmillError a worker raised, found through Ray's wrappers (RayTaskError.cause,
    UserCodeException.__cause__), so the user reads its message rather than a remote traceback."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)  # Ray's wrapper may itself subclass the cause's type
        if isinstance(cause, CapmillError):
            return cause
        if isinstance(e, CapmillError) and cause is None:
            return e
        todo.extend([cause, e.__cause__, e.__context__])
    return None
