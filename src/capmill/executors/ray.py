"""Execution on a Ray cluster, with the same records and the same commit protocol as a local run.

    driver: plan ─► stage actor pools + shard owners set up ─► claim the output
        │  one shard at a time to each owner (`shards_in_flight` owners)
        ▼
    ShardOwner (actor): read → decode → stages → write → commit, the local executor's stream
        │  pooled stages (GPUs, or a set `concurrency`): batches to their actor pools
        ▼
    driver: the owner's outcome (commit record, or why not) → summary, progress, listeners

The unit of work on the cluster is the shard: an owner writes its shard's files and commit
record itself through the shared protocol (capmill.commit), so each shard is committed as soon
as its last sample is written, and a driver killed at any moment leaves every shard committed or
absent. The driver plans, dispatches and reports: per shard it handles one small outcome, never
a sample. It claims the output once every owner and pooled actor has set its stages up (a setup
failure leaves the directory as it was). An owner that dies (OOM, SIGKILL, a lost node) is
restarted by Ray and its shard redone from the start; the rewrite replaces the dead owner's
files, and the commit record is written once, by the owner that finishes the shard.

A private local cluster (no `address`) lives as long as the run: a watcher (capmill.executors.
reaper) ends its processes within seconds if the driver dies.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from capmill.components import Strict
from capmill.errors import CapmillError, CircuitOpenError, SetupError

if TYPE_CHECKING:
    from capmill.config import RunConfig
    from capmill.executors.base import RunJob
    from capmill.executors.reaper import Reaper
    from capmill.stages.base import RunContext

INSTALL_HINT = "the Ray executor needs Ray: install it with `pip install 'capmill[ray]'`"
log = logging.getLogger("capmill")


class RayExecutorConfig(Strict):
    type: Literal["ray"] = "ray"
    # Cluster to join: "auto" (the cluster this machine belongs to), "HOST:6379", or a Ray Client
    # address "ray://HOST:10001". None starts a private local cluster bound to 127.0.0.1 (no
    # dashboard, no usage stats) and stops it when the run ends (or the driver dies).
    address: str | None = None
    # Runtime environment for the workers (pip, env_vars, working_dir, ...), passed to ray.init.
    # Workers of an existing cluster need capmill importable: install it on the nodes, or name it
    # here, e.g. {pip: ["capmill[transformers]"]}.
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    # Samples per stage call, as in a local run.
    batch_size: int = Field(16, ge=1)
    # Shard owners: actors that each read, decode, run the inline stages, write and commit one
    # shard at a time. None: as many as the cluster's CPUs left by the pooled stages allow
    # (`decode_cpus` each), at most one per pending shard.
    shards_in_flight: int | None = Field(None, ge=1)
    # CPUs each shard owner holds (its decode threads: this many, at least one).
    decode_cpus: float = Field(1.0, gt=0)
    # Local cluster only: CPUs and GPUs it offers (None: the machine's, and at least what the
    # owners and pooled stages reserve) and the object store size (None: Ray's default).
    num_cpus: int | None = Field(None, ge=1)
    num_gpus: int | None = Field(None, ge=0)
    object_store_memory_gb: float | None = Field(None, gt=0)
    # An owner or pooled stage actor that dies (OOM, SIGKILL, node lost) is restarted this many
    # times and its call retried (an owner's call is its whole shard); -1 is unlimited.
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


_reaper: Reaper | None = None


def start_local_cluster(num_cpus: int | None = None, num_gpus: int | None = None,
                        object_store_memory_gb: float | None = None, log_to_driver: bool = True) -> None:
    """A private single-node cluster on 127.0.0.1 without dashboard; `stop_local_cluster()`
    stops it, and its processes end with this one should it die (capmill.executors.reaper)."""
    global _reaper
    ray = import_ray()
    from capmill.executors.reaper import Reaper

    reaper = Reaper()
    reaper.mark()
    try:
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
    finally:
        reaper.unmark()  # processes this one starts later are not the cluster's
    _reaper = reaper
    address = ray.get_runtime_context().gcs_address
    if not address.startswith("127.0.0.1:"):
        stop_local_cluster()
        raise SetupError(f"the local Ray cluster did not bind to 127.0.0.1 (it took {address}); "
                         f"start one yourself and pass its address as executor.address")


def stop_local_cluster() -> None:
    """Shut the private cluster down and let the watcher end what is left of it."""
    global _reaper
    import ray

    ray.shutdown()
    if _reaper is not None:
        _reaper.close()
        _reaper = None


def join_cluster(address: str, runtime_env: dict[str, Any] | None = None) -> None:
    ray = import_ray()
    host = address.removeprefix("ray://").rsplit(":", 1)[0]
    loopback = _loopback_node() if host in ("127.0.0.1", "localhost") else nullcontext()
    with loopback:
        ray.init(address=address, runtime_env=runtime_env or None, configure_logging=False)


class RayExecutor:
    def __init__(self, config: RayExecutorConfig):
        self.config = config
        self.context: dict[str, Any] = {}

    def setup(self, run: RunConfig, ctx: RunContext) -> None:
        """Config errors surface here; models load in the owners and stage actors, once the run starts."""
        for stage_cfg in run.stages:
            stage_cfg.build()
        self.context = {"out_dir": ctx.out_dir, "image": ctx.image, "seed": ctx.seed, "input": ctx.input,
                        "resuming": ctx.resuming, "fits": ctx.fits}

    def close(self) -> None:
        pass

    def run(self, job: RunJob):
        ray = import_ray()
        if not job.tasks:
            job.claim()
            return job.summary
        started = self._connect(ray, job.config, len(job.tasks))
        try:
            self._check_capacity(ray, job.config)
            _Dispatch(ray, self.config, job, self.context).run()
        finally:
            if started == "private":
                stop_local_cluster()
            elif started:
                ray.shutdown()
        return job.summary

    def _connect(self, ray, run: RunConfig, shards: int) -> str | None:
        """Join or start a cluster; says which when this run did (and so must shut it down)."""
        cfg = self.config
        if ray.is_initialized():  # the caller manages the cluster (notebooks, tests)
            return None
        if cfg.address is not None:
            join_cluster(cfg.address, cfg.runtime_env)
            return "joined"
        owners = cfg.shards_in_flight or min(shards, os.cpu_count() or 1)
        num_cpus = cfg.num_cpus or max(os.cpu_count() or 1, math.ceil(self._cpus_needed(run, owners)))
        start_local_cluster(num_cpus, cfg.num_gpus, cfg.object_store_memory_gb)
        return "private"

    def _cpus_needed(self, run: RunConfig, owners: int = 1) -> float:
        """Every pooled stage's actors at full size, plus the shard owners."""
        from capmill.executors.ray_workers import is_pooled

        pooled = sum(s.resources.cpus * s.resources.concurrency for s in run.stages if is_pooled(s))
        return self.config.decode_cpus * owners + pooled

    def _check_capacity(self, ray, run: RunConfig) -> None:
        # Owners and pooled actors hold their CPUs for the whole run: with fewer CPUs than the
        # pools and one owner need, the run waits for resources that never come.
        total = ray.cluster_resources().get("CPU", 0.0)
        needed = self._cpus_needed(run)
        if total < needed:
            log.warning(
                "the Ray cluster offers %s CPUs but the pooled stages' actors and one shard owner need %s; "
                "the run waits until the cluster grows (lower stages' resources.cpus or concurrency, or add nodes)",
                total, needed)


class _Dispatch:
    """The driver's part of one run: start the actors, claim the output, hand shards to the
    owners, fold their outcomes into the summary."""

    # Calls queued per owner: the next shard waits in the owner's queue, so an owner never idles
    # waiting for the driver between two shards.
    QUEUED = 2

    def __init__(self, ray, config: RayExecutorConfig, job: RunJob, context: dict[str, Any]):
        self.ray, self.cfg, self.job = ray, config, job
        run = job.config
        self.context = context or {"out_dir": run.output.path, "image": run.image, "seed": run.seed,
                                   "input": run.input}
        self.actors: list = []
        self.owners: list = []
        self.committer = None
        self.stopped: str | None = None

    def run(self) -> None:
        job, summary = self.job, self.job.summary
        try:
            self._start_actors()
            self.committer = job.claim()  # every stage is set up: now the output is ours
            self._dispatch()
        except BaseException as e:
            self._kill_actors()
            if isinstance(e, KeyboardInterrupt):
                summary.interrupted = True
                raise
            cause = _capmill_cause(e)
            if cause is not None:  # a stage's setup or config error, raised in a worker
                raise cause from None
            raise
        finally:
            self._kill_actors()
            self._clean()

    # ---- actors ----------------------------------------------------------------------------

    def _start_actors(self) -> None:
        from capmill.executors.local import LocalExecutorConfig
        from capmill.executors.ray_workers import ShardOwner, StageActor, is_pooled

        ray, cfg, run = self.ray, self.cfg, self.job.config
        retries = {"max_restarts": cfg.max_restarts, "max_task_retries": cfg.max_task_retries}
        pools: dict[int, list] = {}
        for i, stage_cfg in enumerate(run.stages):
            if not is_pooled(stage_cfg):
                continue
            res = stage_cfg.resources
            actor_class = ray.remote(StageActor).options(
                num_cpus=res.cpus, num_gpus=res.gpus or None,
                memory=int(res.memory_gb * 1024**3) if res.memory_gb else None, **retries)
            pools[i] = [actor_class.remote(stage_cfg, self.context) for _ in range(res.concurrency)]
            self.actors.extend(pools[i])
        owners = self._owner_count(pools)
        local = LocalExecutorConfig(batch_size=cfg.batch_size, workers=max(1, round(cfg.decode_cpus)),
                                    shards_in_flight=1, check_duplicate_keys=False)
        owner_class = ray.remote(concurrency_groups={"control": 1})(ShardOwner).options(
            num_cpus=cfg.decode_cpus, **retries)
        self.owners = [owner_class.remote(run, self.context, pools, i, local) for i in range(owners)]
        self.actors.extend(self.owners)
        # Every stage set up (models loaded) before the output is claimed.
        ray.get([a.ready.remote() for a in self.actors])

    def _owner_count(self, pools: dict[int, list]) -> int:
        if self.cfg.shards_in_flight:
            return min(self.cfg.shards_in_flight, len(self.job.tasks))
        run = self.job.config
        total = self.ray.cluster_resources().get("CPU", 0.0)
        pooled = sum(run.stages[i].resources.cpus * len(actors) for i, actors in pools.items())
        fits = int((total - pooled) // self.cfg.decode_cpus)
        return max(1, min(len(self.job.tasks), fits))

    def _kill_actors(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:
                pass
        self.actors, self.owners = [], []

    def _clean(self) -> None:
        """Owners killed mid-shard (a worker lost, the run interrupted) leave temporaries; a run
        holding the output alone removes them now that no owner of its own is left."""
        if self.committer is None or self.job.claims is not None:
            return
        lock = self.committer.lock
        if lock is None or lock.still_held():
            try:
                self.job.out.remove_temporaries()
            except OSError as e:
                log.warning("could not remove temporaries of %s: %s", self.job.out.path, e)

    # ---- shards ----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        from capmill.commit.lock import LeaseView

        ray, job, summary = self.ray, self.job, self.job.summary
        options = job.config.output.storage_options or None
        lease = LeaseView.of(self.committer.lock, options) if self.committer.lock is not None else None
        ledger = None
        if self.cfg.check_duplicate_keys:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            from capmill.executors.ray_workers import KeyLedger

            # On the driver's node (it lives and dies with the run), restarted should it die
            # anyway: it reads the committed keys again.
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
            ledger = ray.remote(KeyLedger).options(num_cpus=0, scheduling_strategy=here, max_restarts=-1,
                                                   max_task_retries=-1).remote(job.out.path,
                                                                               job.config.output.storage_options)
            self.actors.append(ledger)
        todo = deque(job.tasks)
        inflight: dict[Any, tuple[Any, Any]] = {}  # ref → (owner, task)
        load = {id(o): 0 for o in self.owners}
        while todo or inflight:
            if self.stopped is None:
                for owner in self.owners:
                    while load[id(owner)] < self.QUEUED and todo:
                        task = todo.popleft()
                        if job.claims is not None and not job.claims.take(task):
                            continue
                        claims = job.claims.view(task.shard.name) if job.claims is not None else None
                        inflight[owner.run_shard.remote(task, lease, ledger, claims)] = (owner, task)
                        load[id(owner)] += 1
            if not inflight:
                break
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            if self.committer.stopped is None and lease is not None and self.committer.lock.lost:
                self._stop(self.committer.lock.lost)
            for ref in ready:
                owner, task = inflight.pop(ref)
                load[id(owner)] -= 1
                self._outcome(task, ref)
                if job.claims is not None:
                    job.claims.release(task.shard.name)
        if self.stopped is not None:
            summary.stopped = summary.stopped or self.stopped

    def _outcome(self, task, ref) -> None:
        summary, name = self.job.summary, task.shard.name
        try:
            outcome = self.ray.get(ref)
        except Exception as e:
            cause = _capmill_cause(e)
            if cause is not None and not isinstance(cause, CircuitOpenError):
                raise cause from None
            # The owner died and Ray would not restart it (max_restarts): the shard is left to
            # the rerun; its temporaries are removed at the end.
            summary.deferred_shards[name] = f"{task.shard.source}: not committed: its worker died ({type(e).__name__})"
            return
        stats = outcome.get("stats")
        if stats is not None:
            summary.add_shard(stats)
            self.committer.note_committed(stats)
            self.job.progress.advance(samples=stats.get("samples", 0), shards=1)
        if outcome.get("failed"):
            summary.failed_shards[name] = outcome["failed"]
        if outcome.get("deferred"):
            summary.deferred_shards[name] = outcome["deferred"]
        if outcome.get("stopped") and self.stopped is None:
            self._stop(outcome["stopped"])
        if stats is None and not outcome.get("failed") and not outcome.get("deferred"):
            # Nothing committed and nothing said: never let a shard vanish from the summary.
            summary.deferred_shards[name] = f"{task.shard.source}: not committed (its owner gave no reason)"

    def _stop(self, reason: str) -> None:
        """The breaker opened in one owner, or the lock was lost: every owner stops its shard
        (leaving it to the rerun) and takes no new one; committed shards are kept."""
        self.stopped = reason
        for owner in self.owners:
            owner.stop.remote(reason)

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
