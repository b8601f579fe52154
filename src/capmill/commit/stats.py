"""A shard's counters: written as `_stats/SHARD.json`, the shard's commit record."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from capmill.sample import DROPPED, RETRYABLE, Sample
from capmill.text.tally import CaptionTally


@dataclass
class ShardStats:
    """Counters for one shard; written as `_stats/SHARD.json`, the shard's commit record."""

    shard: str
    samples: int = 0
    by_status: Counter = field(default_factory=Counter)
    drops: Counter = field(default_factory=Counter)
    seconds: defaultdict = field(default_factory=lambda: defaultdict(float))
    outputs: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # Caption lengths, length-policy outcomes and fallbacks per caption key.
    captions: CaptionTally = field(default_factory=CaptionTally)
    # Per stage: samples it received and samples it dropped, for the degenerate-result check.
    stages: dict[str, list[int]] = field(default_factory=dict)
    # The shard was cut by --limit: a run without the limit redoes it.
    partial: bool = False

    def count(self, sample: Sample, trail: list[str] | None = None) -> None:
        """Count a written sample; `trail` names the stages it entered (the last one dropped it
        if it is dropped). A sample that failed transiently counts in no stage: it is redone,
        and then counts once, as in a run where it never failed."""
        self.samples += 1
        if sample.status != DROPPED:
            self.captions.add(sample)
        else:  # a guard's drop (or a later stage's) still counts what the guards rejected
            self.captions.add_guards(sample)
        self.by_status[sample.status] += 1
        if sample.status == DROPPED:
            self.drops[sample.error or "unspecified"] += 1
        if trail and sample.status not in RETRYABLE:
            for name in trail:
                self.stages.setdefault(name, [0, 0])[0] += 1
            if sample.status == DROPPED:
                self.stages[trail[-1]][1] += 1

    def merge_seconds(self, seconds: dict[str, float]) -> None:
        for name, value in seconds.items():
            self.seconds[name] += value

    def merge_stage_counts(self, counts: dict[str, dict[str, int]]) -> None:
        """Add per-stage counts as a commit record writes them."""
        for name, c in counts.items():
            mine = self.stages.setdefault(name, [0, 0])
            mine[0] += c.get("samples", 0)
            mine[1] += c.get("dropped", 0)

    @property
    def retryable(self) -> int:
        return sum(self.by_status[s] for s in RETRYABLE)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "shard": self.shard,
            "samples": self.samples,
            "by_status": dict(sorted(self.by_status.items())),
            "drops": dict(sorted(self.drops.items())),
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
            "outputs": self.outputs,
            "captions": self.captions.to_dict(),
            "stages": {name: {"samples": seen, "dropped": dropped} for name, (seen, dropped) in self.stages.items()},
            **self.extra,
        }
        if self.partial:
            out["partial"] = True
        return out


def retryable_in(stats: dict[str, Any]) -> int:
    """Samples of a commit record whose status says they may succeed when redone."""
    return sum(n for status, n in (stats.get("by_status") or {}).items() if status in RETRYABLE)


def degenerate_reasons(stats: dict[str, Any], fallback_share: float, drop_share: float) -> list[str]:
    """Why a committed shard's results are degenerate: a caption key whose fallbacks, or a stage
    whose drops, reach the given share of what it saw (with at least one sample)."""
    reasons = []
    for key, tally in sorted((stats.get("captions") or {}).items()):
        count = tally.get("count", 0)
        fell_back = sum((tally.get("fallbacks") or {}).values())
        if count and fell_back / count >= fallback_share:
            why = ", ".join(f"{r} {n}" for r, n in sorted(tally["fallbacks"].items()))
            reasons.append(f"caption {key!r}: {fell_back} of {count} fell back ({why})")
    for name, counts in (stats.get("stages") or {}).items():
        seen, dropped = counts.get("samples", 0), counts.get("dropped", 0)
        if seen and dropped / seen >= drop_share:
            why = ", ".join(f"{r} {n}" for r, n in sorted((stats.get("drops") or {}).items()))
            reasons.append(f"stage {name!r} dropped {dropped} of the {seen} samples it saw ({why})")
    return reasons
