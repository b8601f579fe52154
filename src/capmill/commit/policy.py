"""The `reliability` section: how much transient failure a shard may hold, when the run stops,
what counts as degenerate, and the lock's timing. None of it changes a record, so none of it is
part of the config hash: a run may be resumed with other settings."""

from __future__ import annotations

import math

from pydantic import Field

from capmill.components import Strict


class LockConfig(Strict):
    # How often the run refreshes the heartbeat of its lock on the output directory.
    heartbeat_s: float = Field(10.0, gt=0)
    # A lock held from another host counts as dead once its heartbeat is this old (a holder on
    # this host is checked by its pid instead). Keep it well above heartbeat_s: a busy NFS
    # server may delay a refresh.
    stale_after_s: float = Field(120.0, gt=0)


class ReliabilityConfig(Strict):
    # Share of a shard's samples that may hold transient failures (server down, timeouts,
    # truncated answers) when the shard is committed; a shard holding more is not committed and
    # is redone by the rerun. Committed ones are redone by `capmill run --retry-errors`.
    transient_budget: float = Field(0.01, ge=0, le=1)
    # Consecutive samples failing transiently in one stage that stop the run (the backend is
    # down: waiting out every retry of every sample would only burn time). 0: never stop.
    breaker_after: int = Field(20, ge=0)
    # A shard is degenerate, and the run fails, when the fallbacks of one caption key reach this
    # share of that key's captions, or the drops of one stage reach this share of the samples it
    # saw (at least one sample). 1.0: only when all of them did; above 1: never (a pipeline
    # meant to drop whole shards).
    fail_at_fallback_share: float = Field(1.0, gt=0)
    fail_at_drop_share: float = Field(1.0, gt=0)
    lock: LockConfig = Field(default_factory=LockConfig)

    def transient_allowed(self, samples: int) -> int:
        return math.floor(self.transient_budget * samples + 1e-9)
