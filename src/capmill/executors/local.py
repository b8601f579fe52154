"""Streaming execution on one machine.

    reader threads (one per shard in flight)     StreamRun.read_shard
        │ batches of raw Samples, decoding submitted to a thread pool (StreamRun.decode)
        ▼
    work queue (bounded) ──► stage loop: every stage on each batch, in arrival order
        ▼                                                          (StreamRun.stage_loop)
    write queue (bounded) ──► writer thread: writes batches, commits a shard after its last
                                                             batch (StreamRun.write_loop)

Each queue holds at most `queue_batches` batches, so memory stays flat however large the
dataset is. Batches never mix shards, and a shard's batches keep their order through both
queues, so a shard's end marker always follows its last batch. Writing and committing go
through the shared commit protocol (`capmill.commit`).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from capmill.commit import KeyRegistry, ShardCommitter, ShardState, ShardStats
from capmill.commit.retry import is_dropped_unkept, load_settled, restore_image
from capmill.components import Strict
from capmill.errors import CircuitOpenError
from capmill.media.decode import decode_batch
from capmill.pipeline import CircuitBreaker, run_stages
from capmill.sample import Sample

if TYPE_CHECKING:
    from capmill.config import RunConfig
    from capmill.executors.base import RunJob
    from capmill.stages.base import RunContext, Stage


class LocalExecutorConfig(Strict):
    type: Literal["local"] = "local"
    # Samples per stage call. Larger batches help GPU backends; the memory held is
    # about batch_size × queue_batches decoded images.
    batch_size: int = Field(16, ge=1)
    # Threads decoding images (PIL releases the GIL while decoding and resizing).
    workers: int = Field(2, ge=1)
    # Shards read and written concurrently; more hides per-shard latency of remote storage.
    shards_in_flight: int = Field(2, ge=1)
    # Bound of each queue, in batches.
    queue_batches: int = Field(4, ge=1)
    # Fail a shard whose keys were already seen in another shard of this output.
    check_duplicate_keys: bool = True

    def build(self) -> LocalExecutor:
        return LocalExecutor(self)


class LocalExecutor:
    """Runs every stage in this process; models are loaded once, in `setup`."""

    def __init__(self, config: LocalExecutorConfig):
        self.config = config
        self.stages: list[Stage] = []

    def setup(self, run: RunConfig, ctx: RunContext) -> None:
        built = [stage_cfg.build() for stage_cfg in run.stages]
        for stage in built:
            self.stages.append(stage)  # torn down by close() even if its setup fails halfway
            stage.setup(ctx)

    def run(self, job: RunJob):
        return StreamRun(self.config, self.stages, job).execute()

    def close(self) -> None:
        for stage in self.stages:
            try:
                stage.teardown()
            except Exception:
                pass
        self.stages = []


_END = object()


class _Halt(Exception):
    """The committer says the run must stop (its lock was taken away)."""


class StreamRun:
    """One run's threads and queues; see the module docstring for how they connect.

    The Ray executor's shard owners run one of these per shard, handing over the committer they
    built (`committer`) instead of claiming the output, which their driver did."""

    def __init__(self, config: LocalExecutorConfig, stages: list[Stage], job: RunJob,
                 committer: ShardCommitter | None = None):
        self.cfg, self.stages, self.job = config, stages, job
        self.image = job.config.image
        self.reencode = job.config.output.reencode is not None
        self.stop = threading.Event()
        self.work_q: queue.Queue = queue.Queue(maxsize=config.queue_batches)
        self.write_q: queue.Queue = queue.Queue(maxsize=config.queue_batches)
        self.slots = threading.Semaphore(config.shards_in_flight)
        self.states: list[ShardState] = []
        self.breaker = CircuitBreaker(job.config.reliability.breaker_after)
        self.keys: KeyRegistry | None = None
        self.committer: ShardCommitter | None = committer
        self.pool: ThreadPoolExecutor | None = None
        # Set from another thread (`request_stop`): the stage loop stops at its next batch.
        self.stop_reason: str | None = None

    def request_stop(self, reason: str) -> None:
        """Stop as the circuit breaker does: keep what is committed, leave the rest for the rerun."""
        self.stop_reason = reason

    def execute(self):
        summary = self.job.summary
        if self.committer is None:
            self.committer = self.job.claim()  # every stage is set up: now the output is ours
        if self.cfg.check_duplicate_keys:
            self.keys = KeyRegistry(self.job.out.committed_keys())
        self.pool = ThreadPoolExecutor(self.cfg.workers, thread_name_prefix="capmill-decode")
        feeder = threading.Thread(target=self.feed_loop, name="capmill-feed", daemon=True)
        writer = threading.Thread(target=self.write_loop, name="capmill-write", daemon=True)
        feeder.start()
        writer.start()
        try:
            self.stage_loop()
            self.put(self.write_q, None)
            writer.join()
        except (CircuitOpenError, _Halt) as e:
            # The backend is down, or the lock was lost: stop, keep what is committed, and leave
            # every shard in flight to the rerun.
            summary.stopped = summary.stopped or self.committer.stopped or str(e)
            self.halt(writer)
            for state in self.states:
                name = state.shard.name
                if not state.committed and name not in summary.failed_shards:
                    summary.deferred_shards.setdefault(name, f"{state.shard.source}: not committed: the run stopped")
        except BaseException:
            # Ctrl-C or a setup error raised by a stage: stop reading, let the writer finish what
            # it is doing (a commit in progress completes), then remove every uncommitted temporary.
            summary.interrupted = True
            self.halt(writer)
            raise
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
        return summary

    def halt(self, writer: threading.Thread) -> None:
        self.stop.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
        _drain(self.write_q)
        self.write_q.put(None)
        writer.join(timeout=60)
        for state in self.states:
            if not state.committed:
                self.committer.abort(state)
            self._release(state)

    def _release(self, state: ShardState) -> None:
        if self.job.claims is not None:
            self.job.claims.release(state.shard.name)

    def put(self, q: queue.Queue, item) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    # ---- reading ---------------------------------------------------------------------------

    def feed_loop(self) -> None:
        """Start one reader thread per shard, at most `shards_in_flight` at once."""
        readers = []
        for task in self.job.tasks:
            while not self.slots.acquire(timeout=0.1):
                if self.stop.is_set():
                    break
            if self.stop.is_set():
                break
            if self.job.claims is not None and not self.job.claims.take(task):
                self.slots.release()  # another process has it, or has done it: the next one
                continue
            state = ShardState(task, ShardStats(task.shard.name))
            self.states.append(state)
            t = threading.Thread(target=self.read_shard, args=(state,), name=f"capmill-read-{task.shard.name}", daemon=True)
            t.start()
            readers.append(t)
        for t in readers:
            t.join()
        self.put(self.work_q, None)

    def read_shard(self, state: ShardState) -> None:
        """Cut one shard into batches and submit their decoding; the end marker follows."""
        task, size = state.task, self.cfg.batch_size
        start = time.perf_counter()
        try:
            if task.retry:
                state.settled = load_settled(self.job.out, self.job.out.stats_of(task.shard.name))
            batch: list[Sample] = []
            for i, sample in enumerate(self.job.reader.read(task.shard)):
                if self.stop.is_set():
                    break
                if task.cap is not None and i >= task.cap:
                    state.stats.partial = True  # the limit cut this shard
                    break
                if self.keys is not None:
                    self.keys.claim(sample.key, task.shard)
                if state.settled is not None:
                    sample = self._settled_or_fresh(state, sample)
                    if sample is None:
                        continue
                batch.append(sample)
                if len(batch) == size:
                    if not self.put(self.work_q, (state, self.pool.submit(self.decode, state, batch))):
                        return
                    batch = []
            if batch and not self.put(self.work_q, (state, self.pool.submit(self.decode, state, batch))):
                return
        except Exception as e:  # a shard that cannot be read fails alone
            state.error = e
        finally:
            state.stats.seconds["read"] += time.perf_counter() - start
        self.put(self.work_q, (state, _END))

    @staticmethod
    def _settled_or_fresh(state: ShardState, fresh: Sample) -> Sample | None:
        """--retry-errors: the committed record (with the input's image) where it is kept, the
        fresh sample where it is retried, None for a dropped sample whose record was not kept."""
        settled = state.settled
        record = settled.records.get(fresh.key)
        if record is not None:
            record.image = fresh.image
            return record
        return None if is_dropped_unkept(fresh.key, settled) else fresh

    def decode(self, state: ShardState, batch: list[Sample]) -> tuple[list[Sample], float]:
        """In the pool: decode the batch (settled records get back what their writers store)."""
        if state.settled is None:
            return batch, decode_batch(batch, self.image)
        start = time.perf_counter()
        decode_batch([s for s in batch if not _is_settled(state, s)], self.image)
        for sample in batch:
            if _is_settled(state, sample):
                restore_image(sample, self.image, self.reencode)
        return batch, time.perf_counter() - start

    # ---- stages ----------------------------------------------------------------------------

    def stage_loop(self) -> None:
        """Every stage on each batch in arrival order, in this (the main) thread: models are
        called from one thread."""
        while True:
            if self.stop_reason is not None:
                raise _Halt(self.stop_reason)
            try:
                item = self.work_q.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is None:
                return
            state, payload = item
            if payload is _END:
                self.put(self.write_q, (state, _END, None))
                continue
            samples, decode_seconds = payload.result()
            state.stats.seconds["decode"] += decode_seconds
            trails: list[list[str]] = [[] for _ in samples]
            if state.error is None:
                todo = [i for i, s in enumerate(samples) if not _is_settled(state, s)]
                done = run_stages(self.stages, [samples[i] for i in todo], state.stats.seconds,
                                  [trails[i] for i in todo], self.breaker)
                for i, sample in zip(todo, done, strict=True):
                    samples[i] = sample
            self.put(self.write_q, (state, samples, trails))
            if self.committer.stopped:
                raise _Halt(self.committer.stopped)

    # ---- writing ---------------------------------------------------------------------------

    def write_loop(self) -> None:
        progress = self.job.progress
        while True:
            item = self.write_q.get()
            if item is None:
                return
            state, payload, trails = item
            try:
                if payload is _END:
                    try:
                        self.committer.finish(state)
                    except Exception as e:  # never a shard neither committed nor reported
                        self.committer.abort(state)
                        self.job.summary.failed_shards[state.shard.name] = (
                            f"{state.shard.source}: commit failed: {type(e).__name__}: {e}")
                    finally:
                        self._release(state)
                        self.slots.release()
                    continue
                if state.error is not None:
                    continue
                self.committer.write(state, payload, trails)
                progress.advance(samples=len(payload))
            except Exception as e:  # disk full, permission: this shard fails, others go on
                state.error = e


def _is_settled(state: ShardState, sample: Sample) -> bool:
    return state.settled is not None and sample.key in state.settled.records


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return
