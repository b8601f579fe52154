"""The cut-offs of a fitted share: the best fraction, a percentile."""

import math

import numpy as np
import pytest

from capmill.fit.cutoff import percentile_cutoff, top_fraction_cutoff


def test_top_fraction_is_the_kth_largest_finite_value():
    values = [0.1, 0.9, 0.5, 0.3, math.nan, 0.7, None, 0.2, 0.8, 0.4, 0.6, 1.0]
    # 10 finite values: the best 30% are 1.0, 0.9, 0.8
    assert top_fraction_cutoff(values, 0.3) == 0.8
    assert top_fraction_cutoff(values, 1.0) == 0.1
    assert top_fraction_cutoff(values, 0.01) == 1.0  # at least one is kept
    assert top_fraction_cutoff(values, 0.12) == 0.9  # ceil(1.2) = 2
    # ties at the cut keep more
    assert top_fraction_cutoff([1, 2, 2, 2, 3], 0.4) == 2
    assert top_fraction_cutoff([math.nan, None], 0.5) is None
    with pytest.raises(ValueError):
        top_fraction_cutoff([1.0], 0.0)


def test_percentile_matches_numpy_over_finite_values():
    rng = np.random.default_rng(0)
    values = list(rng.normal(size=101)) + [math.nan, None]
    finite = [v for v in values if v is not None and not math.isnan(v)]
    for p in (0, 12.5, 50, 88, 100):
        assert percentile_cutoff(values, p) == pytest.approx(float(np.percentile(finite, p)))
    assert percentile_cutoff([], 50) is None
