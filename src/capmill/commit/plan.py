"""Which shards a run processes, given what the output directory already holds.

- A shard whose commit record exists and is complete is skipped.
- `--limit N` covers the first N samples of the input in shard order, counting what committed
  shards already hold: a trial run with a limit, then the full run into the same directory,
  extends the output. A shard cut by a limit is committed as `partial`; a run that needs more of
  it redoes it (a partial shard is never skipped as if it were done).
- `--retry-errors` also reopens committed shards whose records hold retryable failures: their
  retryable samples are processed again and the shard is rewritten under the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

from capmill.commit.stats import retryable_in

if TYPE_CHECKING:
    from capmill.readers.base import Reader, Shard


@dataclass(frozen=True)
class ShardTask:
    """One shard to process."""

    shard: Shard
    # At most this many samples (--limit); None: the whole shard.
    cap: int | None = None
    # --retry-errors: the committed shard is rewritten, only its retryable samples processed.
    retry: bool = False


@dataclass
class RunPlan:
    shards: list[Shard]
    tasks: list[ShardTask]
    # Commit records of shards this run leaves as they are.
    kept: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return len(self.kept)


def plan_run(reader: Reader, shards: list[Shard], committed: dict[str, dict[str, Any]],
             limit: int | None = None, retry_errors: bool = False) -> RunPlan:
    """The tasks of a run over `shards`, given the commit records found (`committed`)."""
    plan = RunPlan(shards, [])
    left = limit
    for shard in shards:
        stats = committed.get(shard.name)
        if left is not None and left <= 0:
            if stats is not None:
                plan.kept[shard.name] = stats
            continue
        if stats is not None and not stats.get("partial"):
            _keep_or_retry(plan, shard, stats, None, retry_errors)
            if left is not None:
                left -= stats.get("samples", 0)
            continue
        if stats is not None and left is not None and stats.get("samples", 0) >= left:
            # A partial shard that already holds what this limit asks for.
            _keep_or_retry(plan, shard, stats, stats.get("samples", 0), retry_errors)
            left = 0
            continue
        if left is None:
            plan.tasks.append(ShardTask(shard))
            continue
        available = count_upto(reader, shard, left)
        plan.tasks.append(ShardTask(shard, cap=left))
        left -= available
    return plan


def _keep_or_retry(plan: RunPlan, shard: Shard, stats: dict[str, Any], cap: int | None, retry_errors: bool) -> None:
    if retry_errors and retryable_in(stats):
        plan.tasks.append(ShardTask(shard, cap=stats.get("samples") if stats.get("partial") else cap, retry=True))
    else:
        plan.kept[shard.name] = stats


def count_upto(reader: Reader, shard: Shard, n: int) -> int:
    """Samples in `shard`, counted up to `n` by reading ahead (cheap next to a run, and only a
    trial run with --limit needs it). A shard that cannot be read counts as `n`: the run reads
    it again and reports its error."""
    try:
        return sum(1 for _ in islice(reader.read(shard), n))
    except Exception:
        return n
