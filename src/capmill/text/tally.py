"""Length and richness report per caption key: words and CLIP tokens (mean, p50, p95), how
many captions met their length target first time, were regenerated or trimmed, how many fell
back, by reason, and what the output guards rejected: each rejected text counted once under its
first reason (`guards`), and what became of the caption (`guard_outcomes`: regenerated,
repaired, fallback, flagged, dropped).

Counts are kept as histograms of integer lengths, so a shard's tally is small, shard tallies
merge exactly into the run's, and percentiles need no list of every caption. The tally is
written into each shard's `_stats/SHARD.json` under "captions" and printed with the run summary.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from capmill.sample import Sample


class _KeyTally:
    __slots__ = ("count", "outcomes", "fallbacks", "words", "clip_tokens", "guards", "guard_outcomes", "flagged")

    def __init__(self) -> None:
        self.count = 0
        self.outcomes: Counter = Counter()
        self.fallbacks: Counter = Counter()
        self.words: Counter = Counter()
        self.clip_tokens: Counter = Counter()
        self.guards: Counter = Counter()
        self.guard_outcomes: Counter = Counter()
        self.flagged: Counter = Counter()

    def add_guards(self, meta: dict) -> None:
        guards = meta.get("guards")
        if isinstance(guards, dict):
            for rejected in guards.get("rejected") or []:
                if rejected.get("reasons"):
                    self.guards[rejected["reasons"][0]] += 1
            if guards.get("outcome"):
                self.guard_outcomes[guards["outcome"]] += 1
        if meta.get("flagged"):
            self.flagged[meta["flagged"]] += 1


def percentile(hist: Counter, q: float) -> int | None:
    """The smallest value with at least q of the mass at or below it (nearest-rank)."""
    total = sum(hist.values())
    if not total:
        return None
    rank, seen = max(1, -(-q * total // 1)), 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return value
    return max(hist)


def _summary(hist: Counter) -> dict[str, Any]:
    total = sum(hist.values())
    if not total:
        return {"mean": None, "p50": None, "p95": None}
    mean = sum(v * n for v, n in hist.items()) / total
    return {"mean": round(mean, 2), "p50": percentile(hist, 0.5), "p95": percentile(hist, 0.95)}


class CaptionTally:
    def __init__(self) -> None:
        self.keys: dict[str, _KeyTally] = defaultdict(_KeyTally)

    def add(self, sample: Sample) -> None:
        for key, caption in sample.captions.items():
            t = self.keys[key]
            t.count += 1
            length = caption.meta.get("length") or {}
            if length.get("outcome"):
                t.outcomes[length["outcome"]] += 1
            if caption.meta.get("fallback"):
                t.fallbacks[caption.meta["fallback"]] += 1
            t.words[length.get("words", len(caption.text.split()))] += 1
            if length.get("clip_tokens") is not None:
                t.clip_tokens[length["clip_tokens"]] += 1
            t.add_guards(caption.meta)

    def add_guards(self, sample: Sample) -> None:
        """Only the guard counts of `sample`'s captions: for samples dropped (by a guard or a
        later stage), whose captions are not counted otherwise."""
        for key, caption in sample.captions.items():
            if caption.meta.get("guards") or caption.meta.get("flagged"):
                self.keys[key].add_guards(caption.meta)

    def to_dict(self) -> dict[str, Any]:
        """Histograms (for merging) plus their summaries (for reading)."""
        return {
            key: {
                "count": t.count,
                "outcomes": dict(sorted(t.outcomes.items())),
                "fallbacks": dict(sorted(t.fallbacks.items())),
                "words": _summary(t.words),
                "clip_tokens": _summary(t.clip_tokens),
                "guards": dict(sorted(t.guards.items())),
                "guard_outcomes": dict(sorted(t.guard_outcomes.items())),
                "flagged": dict(sorted(t.flagged.items())),
                "hist": {"words": {str(k): v for k, v in sorted(t.words.items())},
                         "clip_tokens": {str(k): v for k, v in sorted(t.clip_tokens.items())}},
            }
            for key, t in sorted(self.keys.items())
        }

    def merge(self, data: dict[str, Any] | None) -> None:
        for key, d in (data or {}).items():
            t = self.keys[key]
            t.count += d.get("count", 0)
            t.outcomes.update(d.get("outcomes", {}))
            t.fallbacks.update(d.get("fallbacks", {}))
            t.guards.update(d.get("guards", {}))
            t.guard_outcomes.update(d.get("guard_outcomes", {}))
            t.flagged.update(d.get("flagged", {}))
            hist = d.get("hist", {})
            t.words.update({int(k): v for k, v in hist.get("words", {}).items()})
            t.clip_tokens.update({int(k): v for k, v in hist.get("clip_tokens", {}).items()})

    def render(self) -> str:
        if not self.keys:
            return ""
        lines = [f"{'caption':<16}{'n':>7}{'words mean/p50/p95':>22}{'CLIP tok mean/p50/p95':>25}"
                 f"{'first':>7}{'regen':>7}{'trim':>7}  fallbacks"]
        for key, t in sorted(self.keys.items()):
            w, c = _summary(t.words), _summary(t.clip_tokens)
            fallbacks = ", ".join(f"{r} {n}" for r, n in sorted(t.fallbacks.items())) or "-"
            lines.append(
                f"{key:<16}{t.count:>7}{_triple(w):>22}{_triple(c):>25}"
                f"{t.outcomes['first_try']:>7}{t.outcomes['regenerated']:>7}{t.outcomes['trimmed']:>7}  {fallbacks}"
            )
        guarded = [(key, t) for key, t in sorted(self.keys.items()) if t.guards or t.guard_outcomes]
        if guarded:
            lines.append("")
            lines.append(f"{'output guards':<16}rejected texts by reason → what became of the caption")
            for key, t in guarded:
                reasons = ", ".join(f"{r} {n}" for r, n in sorted(t.guards.items(), key=lambda kv: (-kv[1], kv[0]))) or "-"
                outcomes = ", ".join(f"{o} {n}" for o, n in sorted(t.guard_outcomes.items())) or "-"
                lines.append(f"{key:<16}{reasons} → {outcomes}")
        return "\n".join(lines)


def _triple(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.1f}/{s['p50']}/{s['p95']}"
