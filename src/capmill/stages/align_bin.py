"""`align_bin`: NoC alignment levels — the image–AltText cosine cut into uniform bins.

From "Noise-aware Learning from Web-crawled Image-Text Data for Image Captioning" (NoC, Kang et
al., ICCV 2023): the CLIP cosine of each (image, AltText) pair is quantised into 8 bins of equal
width between the lowest and highest cosine of the dataset; a captioner trained with the bin as a
control signal is decoded at the top bin. The paper's filtering baseline keeps cosine ≥ 0.3.

Two passes (see capmill.fit.prepass): `setup` fits the edges once per output directory on up
to `fit_samples` samples of the run's input (or `fit_input`), stores them in
`OUT/_fit/align_bin-HASH.json`, and `process` assigns `scores["align_bin"]` = 0 … bins−1.
Values outside the fitted range fall into the end bins. The cosine is read from
`scores[score]` when an earlier stage (or run) computed it, else computed with `scorer` and stored
under that key. Give `edges` to skip the fit (e.g. to reuse another dataset's bins).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from capmill import keys
from capmill.backends.base import ImageTextScorer
from capmill.components import BackendSpec, StageConfig
from capmill.errors import ConfigError
from capmill.fit import prepass
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
    # Samples the fit reads, spread evenly over the shards; None reads the whole input.
    fit_samples: int | None = Field(10_000, ge=1)
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

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        cfg = self.config
        self.scorer = None
        if cfg.scorer is not None:
            self.scorer = self.load_backend(cfg.scorer, ImageTextScorer, "the align_bin stage")
        if cfg.edges is not None:
            self.edges = list(cfg.edges)
            return
        source = prepass.fit_input_config(ctx, cfg.fit_input)
        identity = {"stage": cfg.model_dump(mode="json"), "input": source.model_dump(mode="json")}
        state = prepass.load_or_fit(ctx, "align_bin", identity, lambda: self._fit(ctx, source))
        self.edges = state["edges"]

    def _fit(self, ctx: RunContext, source: Any) -> dict[str, Any]:
        cfg = self.config
        values: list[float] = []
        samples = prepass.fit_samples(ctx, source, cfg.fit_samples, decode=self.scorer is not None)
        for batch in prepass.batched(samples, cfg.fit_batch_size):
            values.extend(self._cosines(batch, store=False))
        edges = uniform_edges(values, cfg.bins)
        finite = [v for v in values if not math.isnan(v)]
        return {"edges": edges, "fitted_on": len(finite), "score": cfg.score}

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
            _, cos = prepass.image_alt_cosines(self.scorer, [batch[i] for i in todo])
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
