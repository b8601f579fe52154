"""The orders a judge sees, drawn from a seed and the sample key, and the position bias they reveal.

A judge model tends to prefer a position (the first caption, the last) whatever it holds. The
judge stage therefore shows candidates in an order drawn per sample — reproducible from the
stage's seed and the sample's key alone, in any process, executor or shard order (the same
SHA-512 string seeding the export mix uses) — and records it. On a configurable share of samples
(also drawn from the seed) it judges a second order too; the share of those samples whose two
verdicts disagree is the judge's position-bias rate (`bias_rate`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any


def _rng(seed: int, key: str, purpose: str) -> random.Random:
    return random.Random(f"{seed}\x00{purpose}\x00{key}")


def permutation(seed: int, key: str, count: int) -> list[int]:
    """A seeded permutation of range(count): position p shows candidate perm[p]."""
    order = list(range(count))
    _rng(seed, key, "judge-order").shuffle(order)
    return order


def pair_orders(seed: int, key: str, count: int) -> list[tuple[int, int]]:
    """Every pair of range(count) once, each in a seeded orientation (shown first, shown second)."""
    rng = _rng(seed, key, "judge-pairs")
    out = []
    for i in range(count):
        for j in range(i + 1, count):
            out.append((i, j) if rng.random() < 0.5 else (j, i))
    return out


def checks_bias(seed: int, key: str, share: float) -> bool:
    """Whether this sample is also judged in the other order (a seeded draw with probability `share`)."""
    if share <= 0:
        return False
    return share >= 1 or _rng(seed, key, "judge-bias").random() < share


def bias_rate(checks: Iterable[dict[str, Any]]) -> tuple[float | None, int]:
    """(share of checked comparisons whose two orders disagree, comparisons counted), from the
    `position_bias` records of judged captions; comparisons where either order gave no verdict are
    not counted. None when nothing was checked."""
    agree = total = 0
    for check in checks:
        if not check:
            continue
        agree += int(check.get("agree", 0))
        total += int(check.get("compared", 0))
    return (None if total == 0 else 1 - agree / total), total
