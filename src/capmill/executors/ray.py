"""Execution on a Ray cluster, with the same records and the same commit protocol as a local run.

    driver: one row per pending shard
        │  read (Ray tasks, one per shard, in parallel)     → sample rows + one end row per shard
        ▼
    decode + hygiene (Ray tasks)                           → rows with decoded pixels
        ▼
    stage 1 … stage N (one actor pool per stage, sized by its `resources`)
        ▼
    driver: rows back in shard order → the shared writers → commit (stats file last)

The driver is the only writer. It keeps, per shard, the next position to write and the rows that
came early; rows are written in reader order, so a shard's files are the same bytes a local run
writes, and the shard is committed once its end row has come and every position before it is
written. Rows seen twice (a task Ray retried after a worker died) are skipped by position, so a
shard is never committed twice or half.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from capmill.components import Strict
from capmill.errors import CapmillError, SetupError
from capmill.executors.local import KeyRegistry, ShardState, abort_shard, finish_shard, write_samples
from capmill.executors.ray_rows import StageWorker, decode_rows, read_shards, row_sample
from capmill.pipeline import ShardStats
from capmill.sample import Sample

if TYPE_CHECKING:
    from capmill.config import RunConfig
    from capmill.outputdir import OutputDir
    from capmill.progress import Progress, RunSummary
    from capmill.readers.base import Reader, Shard

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

    def run(self, run: RunConfig, reader: Reader, pending: list[Shard], out: OutputDir,
            summary: RunSummary, progress: Progress, limit: int | None = None) -> RunSummary:
        ray = import_ray()
        for stage_cfg in run.stages:  # config errors surface here, before any worker starts
            stage_cfg.build()
        caps = _limit_caps(reader, pending, limit) if limit is not None else None
        work = pending if caps is None else [s for i, s in enumerate(pending) if i in caps]
        if not work:
            return summary
        started = self._connect(ray, run)
        try:
            self._check_capacity(ray, run)
            self._run(ray, run, work, caps, out, summary, progress)
        finally:
            if started:
                ray.shutdown()
        return summary

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

    def _dataset(self, ray, run: RunConfig, work: list[Shard], caps: dict[int, int] | None):
        cfg = self.config
        reencode = run.output.reencode is not None
        ds = ray.data.from_items([{"shard": i} for i in range(len(work))], override_num_blocks=len(work))
        ds = ds.map_batches(read_shards, batch_size=1, batch_format="pyarrow", num_cpus=cfg.decode_cpus,
                            fn_kwargs={"input_config": run.input, "shards": work, "caps": caps,
                                       "rows_per_block": cfg.batch_size})
        ds = ds.map_batches(decode_rows, batch_size=cfg.batch_size, batch_format="pyarrow", num_cpus=cfg.decode_cpus,
                            fn_kwargs={"image_config": run.image, "keep_pixels": bool(run.stages) or reencode})
        # Given explicitly (Ray Data's generic remote arguments), these actor-only settings also
        # keep Ray Data from fusing the read/decode tasks into the first stage's actors, where
        # decoding would run only as wide as that stage's pool.
        retries = {"max_restarts": cfg.max_restarts, "max_task_retries": cfg.max_task_retries}
        stage_context = {"out_dir": run.output.path, "image": run.image, "seed": run.seed, "input": run.input}
        for i, stage_cfg in enumerate(run.stages):
            res = stage_cfg.resources
            last = i == len(run.stages) - 1
            with warnings.catch_warnings():  # the generic remote arguments are deprecated after 2.60
                warnings.simplefilter("ignore", DeprecationWarning)
                ds = ds.map_batches(
                    StageWorker,
                    fn_constructor_kwargs={"stage_config": stage_cfg, "context": stage_context,
                                           "keep_pixels": reencode or not last},
                    compute=ray.data.ActorPoolStrategy(size=res.concurrency),
                    batch_size=cfg.batch_size,
                    batch_format="pyarrow",
                    num_cpus=res.cpus,
                    num_gpus=res.gpus or None,
                    memory=res.memory_gb * 1024**3 if res.memory_gb else None,
                    **retries,
                )
        return ds

    def _run(self, ray, run: RunConfig, work: list[Shard], caps, out: OutputDir, summary: RunSummary,
             progress: Progress) -> None:
        keys = KeyRegistry(out.committed_keys()) if self.config.check_duplicate_keys else None
        shards = [_Pending(ShardState(shard, ShardStats(shard.name))) for shard in work]
        for p in shards:
            p.state.stats.seconds["read"] = 0.0  # first in the summary, as in a local run
        writer = _OrderedWriter(run, out, summary, progress, keys, with_pixels=run.output.reencode is not None)
        context = ray.data.DataContext.get_current()
        saved = context.enable_progress_bars, context.raise_original_map_exception
        context.enable_progress_bars = False  # capmill's own bar reports the run
        # A stage's SetupError reaches the driver as itself (not a UserCodeException wrapping
        # its text), so the run fails with the error's advice, as a local run does.
        context.raise_original_map_exception = True
        try:
            for block in self._dataset(ray, run, work, caps).iter_batches(batch_size=None, batch_format="pyarrow"):
                for row in block.to_pylist():
                    writer.add(shards[row["shard"]], row)
        except BaseException as e:
            for p in shards:
                if not p.done:
                    abort_shard(p.state)
            if isinstance(e, KeyboardInterrupt):
                summary.interrupted = True
                raise
            cause = _capmill_cause(e)
            if cause is not None:  # a stage's setup or config error, raised in a worker
                raise cause from None
            raise
        finally:
            context.enable_progress_bars, context.raise_original_map_exception = saved
        for p in shards:
            if not p.done:  # cannot happen unless Ray lost rows; never commit such a shard
                abort_shard(p.state)
                summary.failed_shards[p.state.shard.name] = (
                    f"{p.state.shard.source}: incomplete: {p.next} of {p.total} samples came back from Ray")


class _OrderedWriter:
    """Writes each shard's rows in reader order as they come back, commits complete shards."""

    def __init__(self, run: RunConfig, out: OutputDir, summary: RunSummary, progress: Progress,
                 keys: KeyRegistry | None, with_pixels: bool):
        self.run, self.out, self.summary, self.progress = run, out, summary, progress
        self.keys = keys
        self.with_pixels = with_pixels

    def add(self, p: _Pending, row: dict[str, Any]) -> None:
        if p.done:
            return  # a failed shard's late rows
        if row["end"]:
            if p.total is not None:
                return  # a retried read task's second end row
            if row["error"] is not None:
                self._fail(p, row["error"])
                return
            p.total = row["index"]
            p.state.stats.merge_seconds(_seconds(row))
        elif row["index"] >= p.next and row["index"] not in p.early:  # else seen already: a retried task
            p.early[row["index"]] = row
        self._flush(p)

    def _flush(self, p: _Pending) -> None:
        ready: list[Sample] = []
        while p.next in p.early:
            row = p.early.pop(p.next)
            p.next += 1
            p.state.stats.merge_seconds(_seconds(row))
            ready.append(row_sample(row, with_pixels=self.with_pixels))
        if ready and p.state.error is None:
            try:
                if self.keys is not None:
                    for sample in ready:
                        self.keys.claim(sample.key, p.state.shard)
                write_samples(p.state, ready, self.run, self.out)
            except Exception as e:  # duplicate key, disk full: this shard fails, others go on
                p.state.error = e
        if ready:
            self.progress.advance(samples=len(ready))
        if p.total is not None and p.next == p.total:
            p.done = True
            try:
                finish_shard(p.state, self.run, self.out, self.summary, self.progress)
            except Exception as e:  # the commit record could not be written
                abort_shard(p.state)
                self.summary.failed_shards[p.state.shard.name] = f"{p.state.shard.source}: commit failed: {e}"

    def _fail(self, p: _Pending, reason: str) -> None:
        p.done = True
        abort_shard(p.state)
        self.summary.failed_shards[p.state.shard.name] = f"{p.state.shard.source}: {reason}"


def _seconds(row: dict[str, Any]) -> dict[str, float]:
    return json.loads(row["seconds"] or "{}")


def _limit_caps(reader: Reader, pending: list[Shard], limit: int) -> dict[int, int]:
    """Samples to take from each shard so the run covers the first `limit` samples in shard
    order, as a local run does: counted on the driver by reading ahead (cheap next to a run,
    and --limit is for trial runs)."""
    caps: dict[int, int] = {}
    left = limit
    for i, shard in enumerate(pending):
        if left <= 0:
            break
        try:
            n = sum(1 for _ in islice(reader.read(shard), left))
        except Exception:  # the worker reads it again and reports the error with the shard
            n = left
        caps[i] = n
        left -= n
    return caps


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
