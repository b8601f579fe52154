"""`tldr`: data reduction by clustering — keep a stride of each image cluster, then the better half.

From "Too Large; Data Reduction for Vision-Language Pre-Training" (TL;DR, Wang et al., ICCV 2023;
reference showlab/datacentric.vlp `codebook_cluster.py`): embed every image, k-means them into k
clusters (1,000 at CC3M scale), keep every N-th member of each cluster in dataset order (N = 5, the
first always), and intersect with the better half of the dataset by BLIP's image–text matching
(ITM) score. The paper's training text is then "AltText; generated caption"
(`generate_train_json_w_caption.py`): a caption stage plus the `tldr` export recipe
(`capmill export OUT --recipe tldr`, `join_alt_text` with `p_synthetic: 1`).

How much survives depends on the data: with independent stride and score, 1/N × 1/2 ≈ 10% at
N = 5. The paper reports CC3M 2.82M → 0.67M (≈ 24%), which its released code (N = 5 ∩ half) cannot
give on 2.82M inputs, so capmill quotes no figure: the fit computes the retention of each run
(stride, better half and both) and the run summary prints it.

The better half is by ITM when `itm` names an ImageTextMatcher (BLIP ITM through transformers,
`{type: blip_itm, model: Salesforce/blip-itm-base-coco}`): the probability that the AltText
matches the image, as the reference scores. Without it, the fallback is the `scorer`'s CLIP
cosine of image and AltText. A score already in the records (`score`, e.g. from an earlier run)
is read instead of computed.

Differences from the reference, on purpose: clusters are spherical k-means (k-means++ seeding,
seeded by the run's seed) on the scorer's unit image embeddings, without the reference's PCA
whitening to 256 dimensions of its own VQ features; faiss' random seed is replaced by the run's.

The fit step (see capmill.fit) reads the WHOLE input once (the stride needs every member of a
cluster), decides, and stores the decisions in `OUT/_fit/tldr-HASH.json`; `process` drops what
was not selected, with the reason counted. Memory during the fit: one float32 embedding per
sample (512-d CLIP: 2 KiB, so 1M samples ≈ 2 GiB) plus the key list.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, model_validator

from capmill import keys
from capmill.backends.base import ImageTextMatcher, ImageTextScorer
from capmill.components import BackendSpec, StageConfig
from capmill.fit.request import FitRequest
from capmill.fit.samples import batched, image_alt_cosines
from capmill.keys import Key, StageIO
from capmill.readers.run_output import RunOutputInput
from capmill.sample import DROPPED, Sample
from capmill.stages.base import RunContext, Stage

KEEP, NOT_IN_STRIDE, BELOW_MEDIAN = 0, 1, 2
REASONS = {NOT_IN_STRIDE: "tldr: not in the cluster stride", BELOW_MEDIAN: "tldr: below the median score"}


def kmeans(x, k: int, seed: int = 0, iterations: int = 20, chunk: int = 8192):
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
    """key → (cluster, decision): every `stride`-th member of each cluster in input order (the
    first always, as the reference's `range(0, n, N)`), intersected with the samples scoring at
    least the median. NaN scores are below it."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64)
    finite = scores[np.isfinite(scores)]
    median = float(np.median(finite)) if finite.size else math.inf
    by_cluster: dict[int, list[int]] = {}
    for i in range(len(keys)):
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


def retention(decisions: dict[str, tuple[int, int]], scores: list[float]) -> dict[str, float | int]:
    """How many samples the stride, the better half and both keep (the run's own figures)."""
    import numpy as np

    n = len(decisions)
    s = np.asarray(scores, dtype=np.float64)
    finite = s[np.isfinite(s)]
    median = float(np.median(finite)) if finite.size else math.inf
    in_stride = sum(1 for _, d in decisions.values() if d != NOT_IN_STRIDE)
    better_half = int(np.sum(np.isfinite(s) & (s >= median)))
    kept = sum(1 for _, d in decisions.values() if d == KEEP)
    return {"samples": n, "in_stride": in_stride, "better_half": better_half, "kept": kept,
            "retention": kept / n if n else 0.0}


class TldrStageConfig(StageConfig):
    type: Literal["tldr"] = "tldr"
    # Embeds the images for the clusters (and scores image–AltText cosines when `itm` is unset).
    scorer: BackendSpec
    clusters: int = Field(1000, ge=1)
    stride: int = Field(5, ge=1)
    # An image–text matching model (BLIP ITM) for the better half; None: the scorer's cosine.
    itm: BackendSpec | None = None
    # Score key read from the records when present; default itm:alt_text with `itm`, else clip:alt_text.
    score: str | None = None
    # Stores the cluster index of kept samples under this score key; default: the stage's `name`,
    # else "tldr_cluster".
    key: str | None = Field(None, min_length=1)
    fit_input: RunOutputInput | None = None
    fit_batch_size: int = Field(64, ge=1)
    kmeans_iterations: int = Field(20, ge=1)

    @property
    def score_key(self) -> str:
        return self.score or ("itm:alt_text" if self.itm is not None else "clip:alt_text")

    @model_validator(mode="after")
    def _default_key(self) -> TldrStageConfig:
        if self.key is None:
            self.key = self.name or "tldr_cluster"
        return self

    def build(self) -> TldrStage:
        return TldrStage(self)

    def io(self, available: frozenset[Key]) -> StageIO:
        # The fit embeds every image; the "better half" needs the score or the AltText to compute it.
        reads = [keys.IMAGE] if keys.score(self.score_key) in available else [keys.IMAGE, keys.ALT_TEXT]
        return StageIO(reads=reads, writes=[keys.score(self.key)])

    def backend_roles(self) -> dict[str, type]:
        return {"scorer": ImageTextScorer, "itm": ImageTextMatcher}


class TldrStage(Stage):
    config: TldrStageConfig

    @property
    def needs_fit(self) -> bool:
        return True

    def fit_request(self) -> FitRequest:
        return FitRequest(input=self.config.fit_input, scores=(self.config.score_key,), decode=True)

    def fit(self, ctx: RunContext, samples: Iterator[Sample]) -> dict[str, Any]:
        import numpy as np

        from capmill.metrics.embedding import unit_rows

        cfg = self.config
        scorer = self.load_backend(cfg.scorer, ImageTextScorer, "the tldr stage")
        matcher = self.load_backend(cfg.itm, ImageTextMatcher, "the tldr stage's itm") if cfg.itm else None
        keys: list[str] = []
        embeddings: list[Any] = []
        scores: list[float] = []
        for batch in batched(samples, cfg.fit_batch_size):
            if matcher is None:
                emb, half = image_alt_cosines(scorer, batch)
            else:
                emb, half = unit_rows(scorer.embed_images([s.image.image for s in batch])), _match(matcher, batch)
            keys.extend(s.key for s in batch)
            embeddings.append(emb.astype(np.float32))
            scores.extend(s.scores.get(cfg.score_key, float(h)) for s, h in zip(batch, half, strict=True))
        half_by = f"itm ({matcher.model_id})" if matcher is not None else f"image–AltText cosine ({scorer.model_id})"
        state: dict[str, Any] = {"half_by": half_by, "score": cfg.score_key, "stride": cfg.stride}
        if not keys:
            return {**state, "decisions": {}, **retention({}, [])}
        _, labels = kmeans(np.concatenate(embeddings), cfg.clusters, seed=ctx.seed, iterations=cfg.kmeans_iterations)
        decisions = select(keys, labels, scores, cfg.stride)
        return {**state, "clusters": int(labels.max()) + 1, "decisions": {k: list(v) for k, v in decisions.items()},
                **retention(decisions, scores)}

    def fit_summary(self, state: dict[str, Any]) -> str:
        n = state["samples"] or 1
        return (f"keeps {state['kept']} of {state['samples']} samples ({100 * state['retention']:.1f}%): "
                f"cluster stride 1/{state['stride']} keeps {100 * state['in_stride'] / n:.1f}%, better half by "
                f"{state['half_by']} {100 * state['better_half'] / n:.1f}%")

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.decisions = self.fit_state["decisions"]

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


def _match(matcher: Any, batch: list[Sample]) -> Any:
    """ITM probability of (image, AltText) per sample; NaN where there is no AltText."""
    import numpy as np

    out = np.full(len(batch), np.nan)
    with_alt = [i for i, s in enumerate(batch) if s.alt_text and s.alt_text.strip()]
    if with_alt:
        out[with_alt] = matcher.match([batch[i].image.image for i in with_alt], [batch[i].alt_text for i in with_alt])
    return out
