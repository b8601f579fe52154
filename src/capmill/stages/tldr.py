"""`tldr`: data reduction by clustering — keep a stride of each image cluster, then the better half.

From "Too Large; Data Reduction for Vision-Language Pre-Training" (TL;DR, Wang et al., ICCV 2023):
embed every image, k-means them into k clusters (1,000 at CC3M scale), keep every N-th sample of
each cluster (N = 5, the first always), and intersect with the better half of the dataset by
image–text score. CC3M shrank from 2.82M to 0.67M pairs with equal or better retrieval. (The
paper's other half, writing a new caption and training on original + "; " + new, is a caption
stage plus `capmill export ... --set mix.join_alt_text=true`.)

Two passes (see capmill.fit.prepass). `setup` reads the WHOLE input once (the stride needs
every member of a cluster), embeds each image with `scorer`, takes the image–AltText cosine (or
`score` from the record when present), clusters, decides, and stores the decisions in
`OUT/_fit/tldr-HASH.json`; `process` drops what was not selected, with the reason counted.
Memory during the fit: one float32 embedding per sample (512-d CLIP: 2 KiB, so 1M samples ≈ 2 GiB)
plus the key list. Within a cluster, samples are ordered by key so the choice is deterministic.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from capmill import keys
from capmill.backends.base import ImageTextScorer
from capmill.components import BackendSpec, StageConfig
from capmill.fit import prepass
from capmill.keys import Key, StageIO
from capmill.readers.run_output import RunOutputInput
from capmill.sample import DROPPED, Sample
from capmill.stages.base import RunContext, Stage

KEEP, NOT_IN_STRIDE, BELOW_MEDIAN = 0, 1, 2
REASONS = {NOT_IN_STRIDE: "tldr: not in the cluster stride", BELOW_MEDIAN: "tldr: below the median score"}


def kmeans(x, k: int, seed: int = 0, iterations: int = 50, chunk: int = 8192):
    """Spherical k-means (Lloyd on unit vectors, k-means++ seeding). Returns (centroids, labels).

    Distances are computed in chunks of rows so memory is chunk × k, not n × k.
    """
    import numpy as np

    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centroids = np.empty((k, x.shape[1]), dtype=np.float32)
    centroids[0] = x[rng.integers(n)]
    closest = np.full(n, np.inf, dtype=np.float64)
    for c in range(1, k):
        closest = np.minimum(closest, ((x - centroids[c - 1]) ** 2).sum(1))
        total = closest.sum()
        centroids[c] = x[rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)]
    labels = np.zeros(n, dtype=np.int64)
    for it in range(iterations):
        new = np.concatenate([(x[i:i + chunk] @ centroids.T).argmax(1) for i in range(0, n, chunk)])
        if it > 0 and np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            members = x[labels == c]
            if len(members):
                m = members.mean(0)
                centroids[c] = m / max(float(np.linalg.norm(m)), 1e-12)
    return centroids, labels


def select(keys: list[str], labels, scores, stride: int) -> dict[str, tuple[int, int]]:
    """key → (cluster, decision): every `stride`-th member of each cluster by key order (the first
    always), intersected with the samples scoring at least the median. NaN scores are below it."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64)
    finite = scores[np.isfinite(scores)]
    median = float(np.median(finite)) if finite.size else math.inf
    by_cluster: dict[int, list[int]] = {}
    for i in sorted(range(len(keys)), key=keys.__getitem__):
        by_cluster.setdefault(int(labels[i]), []).append(i)
    out: dict[str, tuple[int, int]] = {}
    for cluster, members in by_cluster.items():
        for rank, i in enumerate(members):
            if rank % stride:
                decision = NOT_IN_STRIDE
            elif not (np.isfinite(scores[i]) and scores[i] >= median):
                decision = BELOW_MEDIAN
            else:
                decision = KEEP
            out[keys[i]] = (cluster, decision)
    return out


class TldrStageConfig(StageConfig):
    type: Literal["tldr"] = "tldr"
    # Embeds the images (and the AltText when `score` is not in the records).
    scorer: BackendSpec
    clusters: int = Field(1000, ge=1)
    stride: int = Field(5, ge=1)
    # Image–text score for the "better half"; read from the record when present.
    score: str = "clip:alt_text"
    # Stores the cluster index of kept samples under this score key; default: the stage's `name`,
    # else "tldr_cluster".
    key: str | None = Field(None, min_length=1)
    fit_input: RunOutputInput | None = None
    fit_batch_size: int = Field(64, ge=1)
    kmeans_iterations: int = Field(50, ge=1)

    @model_validator(mode="after")
    def _default_key(self) -> TldrStageConfig:
        if self.key is None:
            self.key = self.name or "tldr_cluster"
        return self

    def build(self) -> TldrStage:
        return TldrStage(self)

    def io(self, available: frozenset[Key]) -> StageIO:
        # The fit embeds every image; the "better half" needs the score or the AltText to compute it.
        reads = [keys.IMAGE] if keys.score(self.score) in available else [keys.IMAGE, keys.ALT_TEXT]
        return StageIO(reads=reads, writes=[keys.score(self.key)])

    def backend_roles(self) -> dict[str, type]:
        return {"scorer": ImageTextScorer}


class TldrStage(Stage):
    config: TldrStageConfig

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        cfg = self.config
        self.scorer = self.load_backend(cfg.scorer, ImageTextScorer, "the tldr stage")
        source = prepass.fit_input_config(ctx, cfg.fit_input)
        identity = {"stage": cfg.model_dump(mode="json"), "input": source.model_dump(mode="json"), "seed": ctx.seed}
        state = prepass.load_or_fit(ctx, "tldr", identity, lambda: self._fit(ctx, source))
        self.decisions = state["decisions"]

    def _fit(self, ctx: RunContext, source: Any) -> dict[str, Any]:
        import numpy as np

        cfg = self.config
        keys: list[str] = []
        embeddings: list[Any] = []
        scores: list[float] = []
        for batch in prepass.batched(prepass.fit_samples(ctx, source, None), cfg.fit_batch_size):
            emb, cos = prepass.image_alt_cosines(self.scorer, batch)
            keys.extend(s.key for s in batch)
            embeddings.append(emb.astype(np.float32))
            scores.extend(s.scores.get(cfg.score, float(c)) for s, c in zip(batch, cos, strict=True))
        if not keys:
            return {"decisions": {}, "samples": 0}
        _, labels = kmeans(np.concatenate(embeddings), cfg.clusters, seed=ctx.seed, iterations=cfg.kmeans_iterations)
        decisions = select(keys, labels, scores, cfg.stride)
        kept = sum(1 for _, d in decisions.values() if d == KEEP)
        return {"decisions": {k: list(v) for k, v in decisions.items()}, "samples": len(keys), "kept": kept}

    def process_one(self, sample: Sample) -> Sample:
        decision = self.decisions.get(sample.key)
        if decision is None:
            sample.status, sample.error = DROPPED, "tldr: not seen by the fit pass"
            return sample
        cluster, code = decision
        if code == KEEP:
            sample.scores[self.config.key] = float(cluster)
        else:
            sample.status, sample.error = DROPPED, REASONS[code]
        return sample
