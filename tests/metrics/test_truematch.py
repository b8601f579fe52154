"""TrueMatch-style bags: disjoint groups of mutually similar images, the same as a brute-force
greedy grouping, chance at 1/K, perfect captions at 1, and harder than random bags."""

import math

import numpy as np
import pytest

from capmill.metrics.embedding import self_retrieval, similar_bags, truematch_r1, unit_rows


def brute_force_bags(emb, size, seed):
    v = unit_rows(emb)
    free = np.ones(len(v), bool)
    bags = []
    for i in np.random.default_rng(seed).permutation(len(v)):
        if not free[i]:
            continue
        free[i] = False
        rest = np.flatnonzero(free)
        if len(rest) < size - 1:
            break
        picked = rest[np.lexsort((rest, -(v[rest] @ v[i])))[: size - 1]]
        free[picked] = False
        bags.append(np.concatenate([[i], picked]))
    return bags


@pytest.mark.parametrize("size", [3, 5, 7])
def test_bags_are_disjoint_and_equal_the_greedy_grouping(size):
    emb = np.random.default_rng(1).standard_normal((300, 8))
    bags = similar_bags(emb, size, seed=2)
    flat = np.concatenate(bags)
    assert len(flat) == len(set(flat.tolist())) and all(len(b) == size for b in bags)
    assert len(bags) == 300 // size
    assert all(np.array_equal(a, b) for a, b in zip(bags, brute_force_bags(emb, size, 2), strict=True))


def test_bags_hold_similar_images():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 16))
    emb = np.repeat(centres, 3, axis=0) + 0.01 * rng.standard_normal((150, 16))  # 50 triplets of near-duplicates
    bags = similar_bags(emb, 3)
    assert sorted(sorted((b // 3).tolist()) for b in bags) == [[i, i, i] for i in range(50)]


def test_recall_at_one_chance_perfect_and_harder_than_random_bags():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((3000, 16))
    assert truematch_r1(images, images, 5) == 1.0
    shuffled = images[rng.permutation(3000)]
    assert truematch_r1(shuffled, images, 5) == pytest.approx(1 / 5, abs=0.03)
    # captions that say what all near-duplicates share, not what tells them apart
    centres = rng.standard_normal((600, 16))
    near = np.repeat(centres, 5, axis=0) + 0.3 * rng.standard_normal((3000, 16))
    vague = np.repeat(centres, 5, axis=0) + 0.3 * rng.standard_normal((3000, 16))
    assert truematch_r1(vague, near, 5) < self_retrieval(vague, near, bag=4)["R@1"] - 0.2
    assert math.isnan(truematch_r1(images[:2], images[:2], 3))
    broken = images[:10].copy()
    broken[3] = np.nan
    assert truematch_r1(broken, images[:10], 3) == 1.0  # the NaN row is left out, not counted wrong
