""""Did you mean …?" for names a user mistyped: types, formats, keys."""

from __future__ import annotations

from collections.abc import Iterable


def edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
    neighbouring characters each cost 1 (`dcs` → `dsc` is one edit, a typical slip)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1]


def closest(word: str, choices: Iterable[str], max_distance: int = 2) -> list[str]:
    """The choices nearest to `word` (case ignored) within `max_distance` edits, best first."""
    scored = sorted((edit_distance(word.lower(), c.lower()), c) for c in set(choices) if c != word)
    if not scored or scored[0][0] > max_distance:
        return []
    best = scored[0][0]
    return [c for d, c in scored if d == best]


def did_you_mean(word: str, choices: Iterable[str], max_distance: int = 2) -> str:
    """` Did you mean 'dsc'?` (with a leading space), or an empty string when nothing is close."""
    near = closest(word, choices, max_distance)
    if not near:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in near) + "?"
