"""Cut-offs that keep the best share of a whole input: the decision a top-fraction or
percentile rule takes in the fit step (Compress & Align keeps the best-rated ~12% of its pairs).

Both are computed over the finite values only (NaN and missing values are unmeasured, never
presumed good or bad), and a value equal to the cut-off is kept, so ties at the cut can keep a
little more than asked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def finite(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(v) and not math.isinf(v)]


def top_fraction_cutoff(values: Iterable[float | None], fraction: float) -> float | None:
    """The smallest value among the best `fraction` of `values`: the k-th largest finite value,
    k = ceil(fraction · n) (at least one). None when no value is finite."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction} is not in (0, 1]")
    ordered = sorted(finite(values), reverse=True)
    if not ordered:
        return None
    k = max(1, math.ceil(fraction * len(ordered) - 1e-9))
    return ordered[k - 1]


def percentile_cutoff(values: Iterable[float | None], percentile: float) -> float | None:
    """The `percentile`-th percentile of the finite values (linear interpolation between the
    closest ranks, numpy's default); values at or above it are kept. None when none is finite."""
    import numpy as np

    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile {percentile} is not in [0, 100]")
    kept = finite(values)
    return float(np.percentile(np.asarray(kept, dtype=np.float64), percentile)) if kept else None
