"""The shard commit protocol, the same for every executor.

    write(state, batch)  … every batch of a shard in reader order (writers open on the first)
    finish(state)        → the writers rename their temporaries into place, then the commit
                           record `_stats/SHARD.json` is written last
    abort(state)         → every temporary of the shard is removed

A shard is not committed when it failed, when it holds more transient failures than the
budget allows (it is left for the rerun), or when the run no longer holds its lock. Whatever
the reason, `abort` leaves no temporary behind, even when the failure was the disk filling up.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from capmill.commit.policy import ReliabilityConfig
from capmill.commit.stats import ShardStats, degenerate_reasons
from capmill.errors import DuplicateKeyError
from capmill.pipeline import release_images
from capmill.sample import DROPPED, Sample
from capmill.writers.output import open_rejects, open_writers

if TYPE_CHECKING:
    from capmill.commit.claims import ClaimCheck
    from capmill.commit.lock import Lease, LeaseView
    from capmill.commit.plan import ShardTask
    from capmill.commit.retry import Settled
    from capmill.config import RunConfig
    from capmill.outputdir import OutputDir
    from capmill.progress import Progress, RunSummary
    from capmill.readers.base import Shard


@dataclass
class ShardState:
    """One shard being written."""

    task: ShardTask
    stats: ShardStats
    error: BaseException | None = None
    writers: list = field(default_factory=list)
    rejects: object = None
    committed: bool = False
    # --retry-errors: what is kept of the committed shard being rewritten.
    settled: Settled | None = None

    @property
    def shard(self) -> Shard:
        return self.task.shard


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


class ShardCommitter:
    """Writes and commits the shards of one run into its output directory."""

    def __init__(self, run: RunConfig, out: OutputDir, summary: RunSummary, progress: Progress,
                 lock: Lease | LeaseView | None = None, reliability: ReliabilityConfig | None = None,
                 claims: ClaimCheck | None = None):
        self.run, self.out, self.summary, self.progress = run, out, summary, progress
        self.lock = lock
        # Cooperating runs: a shard is committed only while this run holds its claim.
        self.claims = claims
        self.reliability = reliability or ReliabilityConfig()
        # Set when the run must stop committing (its lock was taken away); executors check it.
        self.stopped: str | None = None

    def write(self, state: ShardState, samples: list[Sample], trails: list[list[str]] | None = None) -> None:
        """Write one batch of a shard in order (dropped samples to the rejects), opening the
        shard's writers on its first batch. `trails` names the stages each sample entered."""
        if not state.writers:
            self._open(state)
        start = time.perf_counter()
        for i, sample in enumerate(samples):
            state.stats.count(sample, trails[i] if trails is not None else None)
            if sample.status == DROPPED:
                if state.rejects is not None:
                    state.rejects.write(sample)
            else:
                for w in state.writers:
                    w.write(sample)
        release_images(samples)
        state.stats.seconds["write"] += time.perf_counter() - start

    def _open(self, state: ShardState) -> None:
        name = state.shard.name
        state.writers = open_writers(self.run.output, self.out.path, name)
        try:
            state.rejects = open_rejects(self.run.output, self.out.path, name)
        except BaseException:
            self.abort(state)
            raise

    def finish(self, state: ShardState) -> bool:
        """Commit a shard whose every sample is written, or leave it uncommitted (and clean)
        saying why. True when committed."""
        shard = state.shard
        if state.error is None and not state.writers:  # an empty shard still gets its (empty) outputs
            try:
                self._open(state)
            except Exception as e:
                state.error = e
        if state.error is not None:
            self.abort(state)
            self.summary.failed_shards[shard.name] = f"{shard.source}: {type(state.error).__name__}: {state.error}"
            return False
        if self.lock is not None and not self.lock.still_held():
            self.abort(state)
            self.stopped = self.lock.lost or f"the lock {self.lock.path} is no longer held by this run"
            self.summary.stopped = self.stopped
            self.summary.deferred_shards[shard.name] = f"{shard.source}: not committed: the run lost its lock"
            return False
        lost_claim = self.claims.check(shard.name) if self.claims is not None else None
        if lost_claim is not None:
            self.abort(state)
            self.summary.deferred_shards[shard.name] = f"{shard.source}: not committed: {lost_claim}"
            return False
        transient, allowed = state.stats.retryable, self.reliability.transient_allowed(state.stats.samples)
        if transient > allowed:
            self.abort(state)
            self.summary.deferred_shards[shard.name] = (
                f"{shard.source}: {transient} of {state.stats.samples} samples failed transiently "
                f"(budget {allowed}); not committed, the rerun redoes it")
            return False
        start = time.perf_counter()
        try:
            for w in [*state.writers, *([state.rejects] if state.rejects else [])]:
                state.stats.outputs.extend(w.commit())
        except Exception as e:
            self.abort(state)
            self.summary.failed_shards[shard.name] = f"{shard.source}: commit failed: {e}"
            return False
        state.stats.seconds["write"] += time.perf_counter() - start
        self._carry(state)
        stats = state.stats.to_dict()
        try:
            self.out.commit(shard.name, stats)  # the commit record, written last
        except Exception as e:
            self.abort(state)
            self.summary.failed_shards[shard.name] = f"{shard.source}: commit failed: {e}"
            return False
        state.committed = True
        self.summary.add_shard(stats)
        self.note_committed(stats)
        self.progress.advance(shards=1)
        return True

    def note_committed(self, stats: dict) -> None:
        """What a committed shard says about the run: retryable samples, degenerate results."""
        self.summary.note_committed(stats, degenerate_reasons(
            stats, self.reliability.fail_at_fallback_share, self.reliability.fail_at_drop_share))

    @staticmethod
    def _carry(state: ShardState) -> None:
        """A rewritten shard keeps the counts of what it did not process again."""
        if state.settled is None:
            return
        carried = +state.settled.carried_drops
        if carried:
            n = sum(carried.values())
            state.stats.samples += n
            state.stats.by_status[DROPPED] += n
            state.stats.drops.update(carried)
        state.stats.merge_stage_counts(state.settled.carried_stages)

    def abort(self, state: ShardState) -> None:
        """Remove every temporary of the shard. A writer's own abort may fail where its commit
        did (a full disk fails the closing of a tar again), so what it leaves at its temporary
        path is removed here."""
        for w in [*state.writers, *([state.rejects] if state.rejects else [])]:
            try:
                w.abort()
            except Exception:
                pass
            tmp = getattr(w, "tmp", None)
            store = getattr(w, "store", None)
            if tmp and store is not None and not store.local:
                try:
                    store.remove(tmp)
                except OSError:
                    pass
            elif tmp and os.path.lexists(tmp):
                try:
                    shutil.rmtree(tmp) if os.path.isdir(tmp) and not os.path.islink(tmp) else os.remove(tmp)
                except OSError:
                    pass
        state.writers = []
        state.rejects = None
