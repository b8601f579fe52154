"""Length and richness report per caption key: words and CLIP tokens (mean, p50, p95), how
many captions met their length target first time, were regenerated or trimmed, and how many
fused captions fell back, by reason.

Counts are kept as histograms of integer lengths, so a shard's tally is small, shard tallies
merge exactly into the run's, and percentiles need no list of every caption. The tally is
written into each shard's `_stats/SHARD.json` under "captions" and printed with the run summary.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from capmill.sample import Sample


class _KeyTally:
    __slots__ = ("count", "outcomes", "fallbacks", "words", "clip_tokens")

    def __init__(self) -> None:
        self.count = 0
        self.outcomes: Counter = Counter()
        self.fallbacks: Counter = Counter()
        self.words: Counter = Counter()
        self.clip_tokens: Counter = Counter()


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

    def to_dict(self) -> dict[str, Any]:
        """Histograms (for merging) plus their summaries (for reading)."""
        return {
            key: {
                "count": t.count,
                "outcomes": dict(sorted(t.outcomes.items())),
                "fallbacks": dict(sorted(t.fallbacks.items())),
                "words": _summary(t.words),
                "clip_tokens": _summary(t.clip_tokens),
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
        return "\n".join(lines)


def _triple(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.1f}/{s['p50']}/{s['p95']}"
