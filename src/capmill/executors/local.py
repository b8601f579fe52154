"""Streaming execution on one machine.

    shard readers (one thread per shard in flight)
        │ batches of raw Samples, decoding submitted to a thread pool
        ▼
    work queue (bounded) ──► stage thread: every stage on each batch, in arrival order
        ▼
    write queue (bounded) ──► writer thread: writes batches, commits a shard after its last batch

Each queue holds at most `queue_batches` batches, so memory stays flat however large the
dataset is. Batches never mix shards, and a shard's batches keep their order through both
queues, so a shard's end marker always follows its last batch.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from capmill.components import Strict
from capmill.errors import DuplicateKeyError
from capmill.media.decode import decode_batch
from capmill.pipeline import ShardStats, release_images, run_stages
from capmill.progress import Progress, RunSummary
from capmill.sample import DROPPED, Sample
from capmill.stages.base import RunContext
from capmill.writers.output import open_rejects, open_writers

if TYPE_CHECKING:
    from capmill.config import RunConfig
    from capmill.outputdir import OutputDir
    from capmill.readers.base import Reader, Shard


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


_END = object()


@dataclass
class ShardState:
    shard: Shard
    stats: ShardStats
    error: BaseException | None = None
    writers: list = field(default_factory=list)
    rejects: object = None
    committed: bool = False


class KeyRegistry:
    """key → shard across the run, so a duplicate names both shards it appears in."""

    def __init__(self, known: dict[str, str] | None = None):
        self._keys = dict(known or {})
        self._lock = threading.Lock()

    def claim(self, key: str, shard: Shard) -> None:
        with self._lock:
            other = self._keys.setdefault(key, shard.name)
        if other != shard.name:
            raise DuplicateKeyError(
                f"key {key!r} is in shard {other} and in shard {shard.name} ({shard.source}); "
                f"set input.key_prefix: shard to make keys unique per shard"
            )


class LocalExecutor:
    def __init__(self, config: LocalExecutorConfig):
        self.config = config

    def run(self, run: RunConfig, reader: Reader, pending: list[Shard], out: OutputDir,
            summary: RunSummary, progress: Progress, limit: int | None = None) -> RunSummary:
        cfg = self.config
        stages = [stage_cfg.build() for stage_cfg in run.stages]
        ctx = RunContext(out_dir=out.path, image=run.image, seed=run.seed, input=run.input)
        for stage in stages:
            stage.setup(ctx)
        keys = KeyRegistry(out.committed_keys()) if cfg.check_duplicate_keys else None
        stop = threading.Event()
        work_q: queue.Queue = queue.Queue(maxsize=cfg.queue_batches)
        write_q: queue.Queue = queue.Queue(maxsize=cfg.queue_batches)
        # --limit reads shards one after another so the first N samples are always the same.
        slots = threading.Semaphore(1 if limit is not None else cfg.shards_in_flight)
        budget = [limit]
        budget_lock = threading.Lock()
        pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="capmill-decode")
        all_states: list[ShardState] = []

        def put(q: queue.Queue, item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def take(n: int) -> int:
            """How many of n samples the --limit budget still allows."""
            if limit is None:
                return n
            with budget_lock:
                allowed = min(n, budget[0])
                budget[0] -= allowed
                return allowed

        def read_shard(state: ShardState) -> None:
            start = time.perf_counter()
            try:
                batch: list[Sample] = []
                for sample in reader.read(state.shard):
                    if stop.is_set() or not take(1):
                        break
                    if keys is not None:
                        keys.claim(sample.key, state.shard)
                    batch.append(sample)
                    if len(batch) == cfg.batch_size:
                        if not put(work_q, (state, pool.submit(_decode, batch, run.image))):
                            return
                        batch = []
                if batch and not put(work_q, (state, pool.submit(_decode, batch, run.image))):
                    return
            except Exception as e:  # a shard that cannot be read fails alone
                state.error = e
            finally:
                state.stats.seconds["read"] += time.perf_counter() - start
            put(work_q, (state, _END))

        def feed() -> None:
            readers = []
            for shard in pending:
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        break
                if stop.is_set() or (limit is not None and budget[0] <= 0):
                    if not stop.is_set():
                        slots.release()
                    break
                state = ShardState(shard, ShardStats(shard.name))
                all_states.append(state)
                t = threading.Thread(target=read_shard, args=(state,), name=f"capmill-read-{shard.name}", daemon=True)
                t.start()
                readers.append(t)
            for t in readers:
                t.join()
            put(work_q, None)

        def write() -> None:
            while True:
                item = write_q.get()
                if item is None:
                    return
                state, payload = item
                try:
                    if payload is _END:
                        try:
                            finish_shard(state, run, out, summary, progress)
                        except Exception as e:  # the commit record could not be written
                            abort_shard(state)
                            summary.failed_shards[state.shard.name] = f"{state.shard.source}: commit failed: {e}"
                        finally:
                            slots.release()
                        continue
                    if state.error is not None:
                        continue
                    write_samples(state, payload, run, out)
                    progress.advance(samples=len(payload))
                except Exception as e:  # disk full, permission: this shard fails, others go on
                    state.error = e

        feeder = threading.Thread(target=feed, name="capmill-feed", daemon=True)
        writer = threading.Thread(target=write, name="capmill-write", daemon=True)
        feeder.start()
        writer.start()
        try:
            while True:
                item = work_q.get()
                if item is None:
                    break
                state, payload = item
                if payload is _END:
                    put(write_q, (state, _END))
                    continue
                samples, decode_seconds = payload.result()
                state.stats.seconds["decode"] += decode_seconds
                if state.error is None:
                    samples = run_stages(stages, samples, state.stats.seconds)
                put(write_q, (state, samples))
            put(write_q, None)
            writer.join()
        except BaseException:
            # Ctrl-C or a setup error raised by a stage: stop reading, let the writer finish what
            # it is doing (a commit in progress completes), then remove every uncommitted temporary.
            stop.set()
            summary.interrupted = True
            pool.shutdown(wait=False, cancel_futures=True)
            _drain(write_q)
            write_q.put(None)
            writer.join(timeout=60)
            for state in all_states:
                if not state.committed:
                    abort_shard(state)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for stage in stages:
                stage.teardown()
        return summary


def write_samples(state: ShardState, samples: list[Sample], run: RunConfig, out: OutputDir) -> None:
    """Write one batch of a shard in order (dropped samples to the rejects), opening the
    shard's writers on its first batch; shared with the Ray executor."""
    if not state.writers:
        state.writers = open_writers(run.output, out.path, state.shard.name)
        state.rejects = open_rejects(run.output, out.path, state.shard.name)
    start = time.perf_counter()
    for sample in samples:
        state.stats.count(sample)
        if sample.status == DROPPED:
            if state.rejects is not None:
                state.rejects.write(sample)
        else:
            for w in state.writers:
                w.write(sample)
    release_images(samples)
    state.stats.seconds["write"] += time.perf_counter() - start


def finish_shard(state: ShardState, run: RunConfig, out: OutputDir, summary: RunSummary, progress: Progress) -> None:
    """Commit a shard whose every sample is written (or fail it); shared with the Ray executor."""
    if state.error is None and not state.writers:  # an empty shard still gets its (empty) outputs
        try:
            state.writers = open_writers(run.output, out.path, state.shard.name)
            state.rejects = open_rejects(run.output, out.path, state.shard.name)
        except Exception as e:
            state.error = e
    if state.error is not None:
        abort_shard(state)
        summary.failed_shards[state.shard.name] = f"{state.shard.source}: {type(state.error).__name__}: {state.error}"
        return
    start = time.perf_counter()
    try:
        for w in [*state.writers, *([state.rejects] if state.rejects else [])]:
            state.stats.outputs.extend(w.commit())
    except Exception as e:
        state.error = e
        abort_shard(state)
        summary.failed_shards[state.shard.name] = f"{state.shard.source}: commit failed: {e}"
        return
    state.stats.seconds["write"] += time.perf_counter() - start
    stats = state.stats.to_dict()
    out.commit(state.shard.name, stats)  # the commit record, written last
    state.committed = True
    summary.add_shard(stats)
    progress.advance(shards=1)


def _decode(batch: list[Sample], config) -> tuple[list[Sample], float]:
    return batch, decode_batch(batch, config)


def abort_shard(state: ShardState) -> None:
    for w in [*state.writers, *([state.rejects] if state.rejects else [])]:
        try:
            w.abort()
        except Exception:
            pass
    state.writers = []
    state.rejects = None


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return
