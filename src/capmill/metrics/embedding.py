"""Embedding-based metric math shared by stages, `capmill eval` and export: CLIPScore, RefCLIPScore and self-retrieval R@k (pure functions).

CLIPScore and RefCLIPScore follow Hessel et al., "CLIPScore: A Reference-free Evaluation Metric
for Image Captioning" (EMNLP 2021): CLIP-S = 2.5·max(cos(image, text("A photo depicts " + c)), 0);
RefCLIP-S = harmonic mean of CLIP-S and max over references of cos(text(c), text(ref)). Their
reference code does not clip that text–text cosine at 0; `clip_reference=True` does.

Self-retrieval ranks the pool's images by similarity to each caption; R@k is the share of
captions whose own image is among the k best. Pools: the whole set, or for each caption a bag of
K random distractors plus its own image (RD100 uses K = 99), as in the recaptioning literature's
"retrieval with distractors" protocol. Ties count against the caption (an own image tied with a
distractor is not ranked above it), so constant embeddings give no credit.

TrueMatch-style bags (Gaur et al., "No Detail Left Behind: Revisiting Self-Retrieval for
Fine-Grained Image Captioning", 2024; reference manugaurdl/no-detail-left-behind
`truematch_eval.py`) replace random distractors by images like the caption's own: bags of K mutually similar
images by image–image cosine, so only a caption that names what sets its image apart from its
near-duplicates ranks it first. The benchmark
ships fixed bags of sizes 3, 5 and 7 built once over COCO, every member of a bag queried against the
bag; here bags are built from the evaluated set itself by greedy grouping (`similar_bags`), every
member queried likewise, so chance is 1 / K as in the benchmark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

KS = (1, 5, 10)
CLIPSCORE_PREFIX = "A photo depicts "
CLIPSCORE_WEIGHT = 2.5


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length. Backends already normalise; doing it again is cheap and makes
    the cosine right for any scorer. A zero row stays zero (cosine 0), NaN stays NaN."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, x / np.where(norms > 0, norms, 1.0), x)


def clipscore_from_cosine(cos: np.ndarray | float, weight: float = CLIPSCORE_WEIGHT):
    """Hessel et al.'s rescaling: w · max(cos, 0). NaN stays NaN."""
    import numpy as np

    cos = np.asarray(cos, dtype=np.float64)
    return weight * np.where(np.isnan(cos), np.nan, np.maximum(cos, 0.0))


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two matrices of equal shape."""
    import numpy as np

    return np.einsum("ij,ij->i", unit_rows(a), unit_rows(b))


def clip_s(image_emb: np.ndarray, prefixed_text_emb: np.ndarray, weight: float = CLIPSCORE_WEIGHT) -> np.ndarray:
    return clipscore_from_cosine(cosine_pairs(image_emb, prefixed_text_emb), weight)


def ref_clip_s(clip_scores: np.ndarray, text_emb: np.ndarray, ref_embs: list[np.ndarray],
               clip_reference: bool = False) -> np.ndarray:
    """Harmonic mean of CLIP-S and the best text–reference cosine, per item; NaN without references."""
    import numpy as np

    t = unit_rows(text_emb)
    best = np.full(len(clip_scores), np.nan)
    for i, refs in enumerate(ref_embs):
        if refs is not None and len(refs):
            best[i] = float((unit_rows(refs) @ t[i]).max())
    if clip_reference:
        best = np.where(np.isnan(best), np.nan, np.maximum(best, 0.0))
    c = np.asarray(clip_scores, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        h = 2 * c * best / (c + best)
    # H(0, x) is 0, not 0/0.
    return np.where((c + best) == 0, 0.0, h)


def own_ranks(text_emb: np.ndarray, image_emb: np.ndarray, bag: int | None = None, seed: int = 0,
              chunk: int = 1024) -> np.ndarray:
    """For each caption i, how many pool images score strictly above or equal to its own image
    (excluding itself): 0 means ranked first. Pool = all images, or `bag` random others + its own."""
    import numpy as np

    t, v = unit_rows(text_emb), unit_rows(image_emb)
    n = len(t)
    own = np.einsum("ij,ij->i", t, v)
    ranks = np.zeros(n, dtype=np.int64)
    if bag is None or bag >= n - 1:
        for start in range(0, n, chunk):
            sims = t[start:start + chunk] @ v.T  # chunk × n, so memory stays chunk·n
            rows = np.arange(start, min(start + chunk, n))
            better = sims >= own[rows, None]
            better[np.arange(len(rows)), rows] = False
            ranks[rows] = better.sum(1)
        return ranks
    rng = np.random.default_rng(seed)
    for i in range(n):
        others = rng.choice(n - 1, size=bag, replace=False)
        others = others + (others >= i)  # skip the caption's own index
        ranks[i] = int((v[others] @ t[i] >= own[i]).sum())
    return ranks


def recall_at(ranks: np.ndarray, ks=KS, valid: np.ndarray | None = None) -> dict[str, float]:
    """R@k for each k over the items with finite embeddings (`valid`)."""
    import numpy as np

    r = ranks if valid is None else ranks[valid]
    if r.size == 0:
        return {f"R@{k}": float("nan") for k in ks}
    return {f"R@{k}": float(np.mean(r < k)) for k in ks}


def self_retrieval(text_emb: np.ndarray, image_emb: np.ndarray, bag: int | None = None, seed: int = 0,
                   ks=KS) -> dict[str, float]:
    """R@k of each caption finding its own image. Rows with non-finite embeddings are left out of
    the pool and the queries."""
    import numpy as np

    valid = np.isfinite(text_emb).all(1) & np.isfinite(image_emb).all(1)
    t, v = text_emb[valid], image_emb[valid]
    if len(t) == 0:
        return {f"R@{k}": float("nan") for k in ks}
    return recall_at(own_ranks(t, v, bag=bag, seed=seed), ks)


def similar_bags(image_emb: np.ndarray, bag_size: int, seed: int = 0) -> list[np.ndarray]:
    """Disjoint bags of `bag_size` mutually similar images: take an image not yet in a bag (in a
    seeded random order, so no part of the set is favoured), add the `bag_size` − 1 images not yet
    in a bag that are most similar to it, repeat; the few left over when fewer than `bag_size`
    remain form no bag."""
    import numpy as np

    v = unit_rows(image_emb)
    n = len(v)
    # Each image's nearest images, computed once with matrix products in chunks; a bag takes the
    # free ones among them, and only when too few are free is the image compared with all again.
    width = min(n - 1, max(4 * bag_size, 32))
    nearest = np.zeros((n, width), dtype=np.int64)
    for start in range(0, n, 1024):
        sims = v[start:start + 1024] @ v.T
        rows = np.arange(start, min(start + 1024, n))
        sims[np.arange(len(rows)), rows] = -np.inf
        top = np.argpartition(-sims, width - 1, axis=1)[:, :width]
        order = np.lexsort((top, -np.take_along_axis(sims, top, axis=1)), axis=1)  # cosine, then index
        nearest[rows] = np.take_along_axis(top, order, axis=1)
    free = np.ones(n, dtype=bool)
    bags = []
    for i in np.random.default_rng(seed).permutation(n):
        if not free[i]:
            continue
        free[i] = False
        picked = nearest[i][free[nearest[i]]][: bag_size - 1]
        if len(picked) < bag_size - 1:
            candidates = np.flatnonzero(free)
            if len(candidates) < bag_size - 1:
                break
            sims = v[candidates] @ v[i]
            picked = candidates[np.lexsort((candidates, -sims))[: bag_size - 1]]
        free[picked] = False
        bags.append(np.concatenate([[i], picked]))
    return bags


def truematch_r1(text_emb: np.ndarray, image_emb: np.ndarray, bag_size: int, seed: int = 0) -> float:
    """R@1 over `similar_bags`: every caption of a bag ranks the bag's images, and counts when its
    own ranks first (ties count against it). Rows with non-finite embeddings are left out."""
    import numpy as np

    valid = np.isfinite(text_emb).all(1) & np.isfinite(image_emb).all(1)
    t, v = unit_rows(text_emb[valid]), unit_rows(image_emb[valid])
    bags = similar_bags(v, bag_size, seed) if len(t) >= bag_size else []
    if not bags:
        return float("nan")
    hits = []
    for bag in bags:
        sims = t[bag] @ v[bag].T  # caption × image within the bag
        own = np.diag(sims)
        hits.extend(((sims >= own[:, None]).sum(1) == 1).tolist())  # only its own image reaches its score
    return float(np.mean(hits))
