"""`align_bin`: NoC alignment levels — the image–AltText cosine cut into uniform bins.

From "Noise-aware Learning from Web-crawled Image-Text Data for Image Captioning" (NoC, Kang et
al., ICCV 2023): the CLIP cosine of each (image, AltText) pair is quantised into 8 bins of equal
width between the lowest and highest cosine of the dataset; a captioner trained with the bin as a
control signal is decoded at the top bin. The paper's filtering baseline keeps cosine ≥ 0.3.
Reference: kakaobrain/noc `preprocess/get_noc_bucket.py` scores every pair of the training set
with OpenAI CLIP ViT-L/14 at 224 px (`openai/clip-vit-large-patch14` in transformers) and fits
scikit-learn's `KBinsDiscretizer(n_bins=8, strategy="uniform")` on all of them; `assign_bin`
gives the same bin as its `transform`, values beyond the fitted range included (end bins).

The edges come from the fit step (see capmill.fit): by default on the whole input, as NoC fits
(`fit_samples: N` fits on N samples spread evenly over the shards instead: faster, with ends
that can miss the extremes). The fit reads only what it needs: on a capmill output (the run's
input or `fit_input`) the `score` column of its parquet files, without images; on a raw input
the images and AltTexts, scored with `scorer`. `process` assigns `scores["align_bin"]` = 0 …
bins−1, reading the cosine from `scores[score]` when an earlier stage computed it, else computing
it with `scorer` and storing it under that key. Give `edges` to skip the fit (another dataset's
bins). Bins fitted with one scorer mean nothing for another's cosines: keep the scorer fixed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, model_validator

from capmill import keys
from capmill.backends.base import ImageTextScorer
from capmill.components import BackendSpec, StageConfig
from capmill.errors import ConfigError
from capmill.fit.request import FitRequest
from capmill.fit.samples import batched, image_alt_cosines
from capmill.keys import Key, StageIO
from capmill.readers.run_output import RunOutputInput
from capmill.sample import DECODE_ERROR, Sample
from capmill.stages.base import RunContext, Stage


def uniform_edges(values, bins: int) -> list[float]:
    """bins+1 equally spaced edges from the lowest to the highest finite value."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ConfigError("align_bin: no finite image–AltText cosine to fit bins on (no AltText, or every score is NaN)")
    lo, hi = float(v.min()), float(v.max())
    if hi == lo:  # a constant dataset: one point, all bins of width 0 collapse into bin 0
        hi = lo + 1e-6
    return [float(x) for x in np.linspace(lo, hi, bins + 1)]


def assign_bin(value: float, edges: list[float]) -> int | None:
    """Index of the bin holding `value` (end bins take everything beyond the edges); None for NaN."""
    import bisect

    if value is None or math.isnan(value):
        return None
    return min(max(bisect.bisect_right(edges, value) - 1, 0), len(edges) - 2)


class AlignBinStageConfig(StageConfig):
    type: Literal["align_bin"] = "align_bin"
    # The image–AltText cosine to bin; read from the record when present.
    score: str = "clip:alt_text"
    # Computes the cosine when the record lacks it (during the fit and the streaming pass).
    scorer: BackendSpec | None = None
    bins: int = Field(8, ge=2)
    # Score key of the bin; default: the stage's `name`, else "align_bin".
    key: str | None = Field(None, min_length=1)
    # Fixed edges (bins+1 increasing values); skips the fit.
    edges: list[float] | None = None
    # Samples the fit reads, spread evenly over the shards; None (NoC's choice) the whole input.
    fit_samples: int | None = Field(None, ge=1)
    # Input to fit on instead of the run's own (a capmill output with the scores is cheapest).
    fit_input: RunOutputInput | None = None
    fit_batch_size: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _edges_match_bins(self) -> AlignBinStageConfig:
        if self.edges is not None:
            if len(self.edges) != self.bins + 1 or any(b <= a for a, b in zip(self.edges, self.edges[1:])):
                raise ValueError(f"edges must be {self.bins + 1} increasing values for {self.bins} bins")
        if self.key is None:
            self.key = self.name or "align_bin"
        return self

    def build(self) -> AlignBinStage:
        return AlignBinStage(self)

    def io(self, available: frozenset[Key]) -> StageIO:
        reads, writes = [keys.ALT_TEXT], [keys.score(self.key)]
        cosine = keys.score(self.score)
        if cosine not in available:
            if self.scorer is None:
                reads.append(cosine)  # nothing to compute it with: it must be there
            else:
                reads.append(keys.IMAGE)
                writes.append(cosine)
        return StageIO(reads=reads, writes=writes)

    def backend_roles(self) -> dict[str, type]:
        return {"scorer": ImageTextScorer}


class AlignBinStage(Stage):
    config: AlignBinStageConfig

    @property
    def needs_fit(self) -> bool:
        return self.config.edges is None

    def fit_request(self) -> FitRequest:
        cfg = self.config
        return FitRequest(input=cfg.fit_input, scores=(cfg.score,), decode=cfg.scorer is not None,
                          images_for_scores=True, max_samples=cfg.fit_samples)

    def fit(self, ctx: RunContext, samples: Iterator[Sample]) -> dict[str, Any]:
        cfg = self.config
        self.scorer = self._load_scorer()
        values: list[float] = []
        for batch in batched(samples, cfg.fit_batch_size):
            values.extend(self._cosines(batch, store=False))
        finite = [v for v in values if not math.isnan(v)]
        return {"edges": uniform_edges(values, cfg.bins), "fitted_on": len(finite), "samples": len(values),
                "score": cfg.score, "scorer": self.scorer.model_id if self.scorer is not None else None}

    def fit_summary(self, state: dict[str, Any]) -> str:
        edges = state["edges"]
        return (f"{len(edges) - 1} uniform bins of {state['score']} fitted on {state['fitted_on']} of "
                f"{state['samples']} samples, from {edges[0]:.4f} to {edges[-1]:.4f}")

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.scorer = self._load_scorer()
        self.edges = list(self.config.edges) if self.config.edges is not None else self.fit_state["edges"]

    def _load_scorer(self) -> Any:
        if self.config.scorer is None:
            return None
        return self.load_backend(self.config.scorer, ImageTextScorer, "the align_bin stage")

    def _cosines(self, batch: list[Sample], store: bool) -> list[float]:
        """The cosine of every sample, from its record or computed with the scorer; NaN where the
        sample has no AltText or no image. Computed values are stored when `store`."""
        cfg = self.config
        values = [s.scores.get(cfg.score, math.nan) for s in batch]
        todo = [i for i, s in enumerate(batch) if cfg.score not in s.scores and _has_alt(s)]
        if todo and self.scorer is None:
            raise ConfigError(
                f"align_bin: samples have no {cfg.score!r} score and the stage has no `scorer`. Give align_bin "
                f"the scorer clip_score uses (it fits before the run, when no score exists yet), or fit on a "
                f"scored earlier output with `fit_input`"
            )
        todo = [i for i in todo if batch[i].image.image is not None]
        if todo:
            _, cos = image_alt_cosines(self.scorer, [batch[i] for i in todo])
            for i, c in zip(todo, cos, strict=True):
                values[i] = float(c)
                if store:
                    batch[i].scores[cfg.score] = float(c)
        return values

    def process(self, batch: list[Sample]) -> list[Sample]:
        cfg = self.config
        values = self._cosines(batch, store=True)
        for sample, value in zip(batch, values, strict=True):
            if cfg.score not in sample.scores and _has_alt(sample):
                sample.fail(DECODE_ERROR, "align_bin needs a decoded image to compute its cosine")
                continue
            b = assign_bin(value, self.edges)  # None (no bin) without AltText or for a NaN score
            if b is not None:
                sample.scores[cfg.key] = float(b)
        return batch


def _has_alt(sample: Sample) -> bool:
    return bool(sample.alt_text and sample.alt_text.strip())
