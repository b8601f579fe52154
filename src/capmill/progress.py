"""Progress while a run goes, and the summary when it ends (the same for every executor)."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from capmill.text.tally import CaptionTally


class Progress:
    """A tqdm bar on a terminal; a plain log line every `interval` seconds otherwise.

    Counts samples written and shards committed. The ETA extrapolates from the mean samples
    per committed shard, since tar shards do not say how many samples they hold.
    """

    def __init__(self, total_shards: int, stream: TextIO | None = None, interval: float = 10.0, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.total_shards = total_shards
        self.interval = interval
        self.samples = 0
        self.shards = 0
        self.start = time.monotonic()
        self._last_log = self.start
        self._lock = threading.Lock()
        self._bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=None, unit="sample", file=self.stream, dynamic_ncols=True, smoothing=0.1)
        self.enabled = enabled

    def eta(self) -> float | None:
        if self.shards == 0 or self.samples == 0:
            return None
        per_shard = self.samples / self.shards
        remaining = (self.total_shards - self.shards) * per_shard
        rate = self.samples / max(time.monotonic() - self.start, 1e-9)
        return remaining / rate

    def advance(self, samples: int = 0, shards: int = 0) -> None:
        with self._lock:
            self.samples += samples
            self.shards += shards
            if self._bar is not None:
                if shards and self.total_shards:
                    self._bar.total = int(self.samples / self.shards * self.total_shards)
                self._bar.set_postfix_str(f"shards {self.shards}/{self.total_shards}", refresh=False)
                self._bar.update(samples)
            elif self.enabled and time.monotonic() - self._last_log >= self.interval:
                self._last_log = time.monotonic()
                self.stream.write(self.line() + "\n")
                self.stream.flush()

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.samples / max(elapsed, 1e-9)
        eta = self.eta()
        eta_text = f", ETA {eta:.0f}s" if eta is not None else ""
        return f"capmill: {self.samples} samples ({rate:.1f}/s), shards {self.shards}/{self.total_shards}{eta_text}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@dataclass
class RunSummary:
    shards_total: int = 0
    shards_skipped: int = 0  # committed by an earlier run
    shards_done: int = 0
    # Cooperating runs (--cooperate): shards another run had claimed or committed when this one
    # came to them.
    shards_elsewhere: int = 0
    failed_shards: dict[str, str] = field(default_factory=dict)  # shard → reason
    by_status: Counter = field(default_factory=Counter)
    drops: Counter = field(default_factory=Counter)
    seconds: defaultdict = field(default_factory=lambda: defaultdict(float))
    wall_seconds: float = 0.0
    samples: int = 0
    interrupted: bool = False
    captions: CaptionTally = field(default_factory=CaptionTally)
    # Called as listener(stats, summary) after each committed shard is counted (e.g. a tracker).
    listeners: list[Callable[[dict[str, Any], RunSummary], None]] = field(default_factory=list, repr=False, compare=False)
    # Problems that do not touch the data (a tracker that stopped logging), shown with the summary.
    warnings: list[str] = field(default_factory=list)
    # One line per stage the fit step fitted (or reused) before the run: what it decided.
    fits: list[str] = field(default_factory=list)
    # Shards not committed because they hold too many transient failures (or the run stopped
    # before committing them): the rerun redoes them.
    deferred_shards: dict[str, str] = field(default_factory=dict)
    # Why the run stopped early (circuit breaker, lost lock), if it did.
    stopped: str | None = None
    # Committed shards (this run's or earlier ones) holding retryable samples: shard → count.
    retryable: dict[str, int] = field(default_factory=dict)
    # Committed shards whose results are degenerate: shard → reasons.
    degenerate: dict[str, list[str]] = field(default_factory=dict)

    def add_shard(self, stats: dict[str, Any]) -> None:
        self.shards_done += 1
        self.samples += stats["samples"]
        self.by_status.update(stats["by_status"])
        self.drops.update(stats["drops"])
        for name, value in stats["seconds"].items():
            self.seconds[name] += value
        self.captions.merge(stats.get("captions"))
        for listener in list(self.listeners):
            try:
                listener(stats, self)
            except Exception as e:  # the shard is committed whatever a listener does; it stops here
                self.listeners.remove(listener)
                self.warnings.append(f"{getattr(listener, '__qualname__', listener)} stopped: {type(e).__name__}: {e}")

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data (`capmill run --json`, trackers)."""
        return {
            "ok": self.ok,
            "shards": {"total": self.shards_total, "done": self.shards_done, "skipped": self.shards_skipped,
                       "failed": len(self.failed_shards), "elsewhere": self.shards_elsewhere},
            "failed_shards": dict(sorted(self.failed_shards.items())),
            "samples": self.samples,
            "wall_seconds": round(self.wall_seconds, 3),
            "samples_per_s": round(self.samples / self.wall_seconds, 3) if self.wall_seconds else 0.0,
            "by_status": dict(sorted(self.by_status.items())),
            "drops": dict(sorted(self.drops.items())),
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
            "captions": self.captions.to_dict(),
            "interrupted": self.interrupted,
            "deferred_shards": dict(sorted(self.deferred_shards.items())),
            "stopped": self.stopped,
            "retryable": dict(sorted(self.retryable.items())),
            "degenerate": dict(sorted(self.degenerate.items())),
            "fits": list(self.fits),
            "warnings": list(self.warnings),
        }

    def note_committed(self, stats: dict[str, Any], degenerate: list[str]) -> None:
        """Record what a committed shard's commit record says is not right yet."""
        from capmill.commit.stats import retryable_in

        shard = stats["shard"]
        n = retryable_in(stats)
        if n:
            self.retryable[shard] = n
        else:
            self.retryable.pop(shard, None)
        if degenerate:
            self.degenerate[shard] = degenerate
        else:
            self.degenerate.pop(shard, None)

    @property
    def ok(self) -> bool:
        """Exit 0 means the data is right: nothing failed, left over, retryable or degenerate."""
        return not (self.failed_shards or self.interrupted or self.deferred_shards or self.stopped
                    or self.retryable or self.degenerate)

    def render(self) -> str:
        rate = self.samples / self.wall_seconds if self.wall_seconds else 0.0
        deferred = f", {len(self.deferred_shards)} left for the rerun" if self.deferred_shards else ""
        elsewhere = f", {self.shards_elsewhere} by cooperating runs" if self.shards_elsewhere else ""
        lines = [
            f"shards: {self.shards_done} done, {self.shards_skipped} already committed, "
            f"{len(self.failed_shards)} failed{deferred}{elsewhere}, of {self.shards_total}",
            f"samples: {self.samples} in {self.wall_seconds:.1f}s ({rate:.1f}/s)",
        ]
        lines.extend(f"fit {line}" for line in self.fits)
        if self.by_status:
            lines.append("")
            lines.append(f"{'status':<24}{'samples':>10}")
            for status, n in sorted(self.by_status.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"{status:<24}{n:>10}")
        if self.drops:
            lines.append("")
            lines.append(f"{'dropped by':<24}{'samples':>10}")
            for reason, n in sorted(self.drops.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"{reason:<24}{n:>10}")
        if self.seconds:
            lines.append("")
            lines.append(f"{'step':<24}{'seconds':>10}{'ms/sample':>12}")
            for name, secs in self.seconds.items():
                per = 1000 * secs / self.samples if self.samples else 0.0
                lines.append(f"{name:<24}{secs:>10.2f}{per:>12.2f}")
        if self.captions.keys:
            lines.append("")
            lines.append(self.captions.render())
        for shard, reason in sorted(self.failed_shards.items()):
            lines.append(f"FAILED shard {shard}: {reason}")
        for shard, reason in sorted(self.deferred_shards.items()):
            lines.append(f"LEFT FOR RERUN shard {shard}: {reason}")
        for shard, reasons in sorted(self.degenerate.items()):
            lines.append(f"DEGENERATE shard {shard}: {'; '.join(reasons)}")
        if self.retryable:
            shown = ", ".join(f"{s} ({n})" for s, n in sorted(self.retryable.items())[:10])
            more = " …" if len(self.retryable) > 10 else ""
            lines.append(f"RETRYABLE: {sum(self.retryable.values())} sample(s) in {len(self.retryable)} committed "
                         f"shard(s) failed transiently: {shown}{more}; rerun with --retry-errors to redo only them")
        if self.stopped:
            lines.append(f"STOPPED: {self.stopped}")
        if self.interrupted:
            lines.append("interrupted: committed shards are kept; rerun the same command to resume")
        for warning in self.warnings:
            lines.append(f"warning: {warning}")
        return "\n".join(lines)
