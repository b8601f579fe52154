"""`reward_score`: a reward model's score of the AltText and captions, and optionally the best share.

Compress & Align ("Compress and Align: Curating Image-Text Data with Human Knowledge", 2025; no
public code) trains a reward model on human ratings of image-text pairs and keeps the best-rated
pairs (130M → 15.5M, ~12%). This stage scores each configured text with any `RewardModel`
(`capmill.backends.reward`: a sequence-classification checkpoint, with the image when `image` is
on) and stores `scores["reward:FIELD"]`; scores are kept, so a later `filter` can re-threshold
without rescoring.

`keep` drops samples by the score of one field: a threshold (`min`), or the best share of the
whole input (`top_fraction`, `percentile`), which is decided in the fit step: the fit scores the
field of every sample of its input (reading the score instead where the input already holds it,
e.g. an earlier run's output) and stores the cut-off; the stream then scores each sample again
and compares. The fit needs the text of the field in its input, so a share is kept of the
AltText, or of a caption that the fit input (an earlier capmill output) holds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from capmill import keys
from capmill.backends.base import RewardModel
from capmill.components import BackendSpec, StageConfig, Strict
from capmill.errors import ConfigError
from capmill.fit.cutoff import finite, percentile_cutoff, top_fraction_cutoff
from capmill.fit.request import FitRequest
from capmill.fit.samples import batched
from capmill.keys import Key, StageIO
from capmill.readers.run_output import RunOutputInput
from capmill.sample import DECODE_ERROR, DROPPED, Sample
from capmill.stages.base import RunContext, Stage


class RewardKeep(Strict):
    """Which samples stay, by the reward of one field: a threshold or the best share."""

    field: str = "alt_text"
    min: float | None = None
    # The best share of the input (Compress & Align keeps ~12%): a fraction, or a percentile
    # to be at or above. Fitted on the whole input before the run.
    top_fraction: float | None = Field(None, gt=0, le=1)
    percentile: float | None = Field(None, ge=0, le=100)
    # A sample whose field has no text or no finite score: dropped (not presumed good) or kept.
    missing: Literal["drop", "keep"] = "drop"

    @model_validator(mode="after")
    def _one_rule(self) -> RewardKeep:
        given = [n for n in ("min", "top_fraction", "percentile") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"keep takes one of min, top_fraction or percentile (given: {given or 'none'})")
        return self

    @property
    def fitted(self) -> bool:
        return self.top_fraction is not None or self.percentile is not None

    def reason(self) -> str:
        if self.top_fraction is not None:
            return f"not in the top {100 * self.top_fraction:g}%"
        if self.percentile is not None:
            return f"below its {self.percentile:g}th percentile"
        return f"< {self.min:g}"


class RewardScoreStageConfig(StageConfig):
    omit_when_none: ClassVar[frozenset[str]] = frozenset({"name", "fit_input", "fit_samples"})

    type: Literal["reward_score"] = "reward_score"
    backend: BackendSpec
    # Texts to score: "alt_text" and caption names.
    fields: list[str] = Field(default_factory=lambda: ["alt_text"], min_length=1)
    # Prefix of the score keys ("reward:alt_text"); default: the stage's name, else "reward".
    key: str | None = Field(None, min_length=1)
    # Hand each text its image (an image-text reward model needs it; a text model ignores it).
    image: bool = True
    keep: RewardKeep | None = None
    fit_input: RunOutputInput | None = None
    fit_samples: int | None = Field(None, ge=1)
    fit_batch_size: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _defaults(self) -> RewardScoreStageConfig:
        if self.key is None:
            self.key = self.name or "reward"
        if self.keep is not None and self.keep.field not in self.fields:
            raise ValueError(f"keep.field {self.keep.field!r} is not among the scored fields {self.fields}")
        return self

    def build(self) -> RewardScoreStage:
        return RewardScoreStage(self)

    def score_key(self, field: str) -> str:
        return f"{self.key}:{field}"

    def io(self, available: frozenset[Key]) -> StageIO:
        reads = [keys.text(f) for f in self.fields] + ([keys.IMAGE] if self.image else [])
        return StageIO(reads=reads, writes=[keys.score(self.score_key(f)) for f in self.fields])

    def backend_roles(self) -> dict[str, type]:
        return {"backend": RewardModel}


class RewardScoreStage(Stage):
    config: RewardScoreStageConfig

    @property
    def needs_fit(self) -> bool:
        return self.config.keep is not None and self.config.keep.fitted

    def fit_request(self) -> FitRequest:
        cfg = self.config
        return FitRequest(input=cfg.fit_input, scores=(cfg.score_key(cfg.keep.field),), alt_text=True,
                          decode=cfg.image, images_for_scores=True, max_samples=cfg.fit_samples)

    def fit(self, ctx: RunContext, samples: Iterator[Sample]) -> dict[str, Any]:
        cfg = self.config
        field, key = cfg.keep.field, cfg.score_key(cfg.keep.field)
        self.backend = self.load_backend(cfg.backend, RewardModel, "the reward_score stage")
        values: list[float] = []
        n = without_text = 0
        for batch in batched(samples, cfg.fit_batch_size):
            n += len(batch)
            todo = [s for s in batch if key not in s.scores and (s.text(field) or "").strip()]
            without_text += sum(1 for s in batch if key not in s.scores and not (s.text(field) or "").strip())
            values.extend(s.scores[key] for s in batch if key in s.scores)
            if todo:
                values.extend(float(v) for v in self._score([(s, field) for s in todo]))
        measured = finite(values)
        if not measured:
            raise ConfigError(f"reward_score: keep fits on scores[{key!r}] over the input, but none of the {n} samples "
                              f"the fit read has a {field} to score or that score. Keep a share of the AltText, or fit on "
                              f"an earlier capmill output that holds the field (fit_input: {{type: capmill, path: ...}})")
        keep = cfg.keep
        cutoff = (top_fraction_cutoff(measured, keep.top_fraction) if keep.top_fraction is not None
                  else percentile_cutoff(measured, keep.percentile))
        return {"cutoff": cutoff, "fitted_on": len(measured), "samples": n, "without_text": without_text,
                "scorer": self.backend.model_id}

    def fit_summary(self, state: dict[str, Any]) -> str:
        keep = self.config.keep
        share = f"top {100 * keep.top_fraction:g}%" if keep.top_fraction is not None else f"≥ {keep.percentile:g}th percentile"
        return (f"{self.config.score_key(keep.field)} {share}: keeps ≥ {state['cutoff']:.4g} (fitted on "
                f"{state['fitted_on']} of {state['samples']} samples)")

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.backend = self.load_backend(self.config.backend, RewardModel, "the reward_score stage")
        keep = self.config.keep
        self.threshold = None if keep is None else (self.fit_state["cutoff"] if keep.fitted else keep.min)

    def _score(self, pairs: list[tuple[Sample, str]]) -> list[float]:
        texts = [sample.text(field) or "" for sample, field in pairs]
        images = [sample.image.image for sample, _ in pairs] if self.config.image else None
        return [float(v) for v in self.backend.score(texts, images)]

    def process(self, batch: list[Sample]) -> list[Sample]:
        cfg = self.config
        pairs: list[tuple[Sample, str]] = []
        for sample in batch:
            if cfg.image and sample.image.image is None:
                sample.fail(DECODE_ERROR, "reward_score needs a decoded image (image: false scores texts alone)")
                continue
            pairs.extend((sample, f) for f in cfg.fields if (sample.text(f) or "").strip())
        # One backend call for every text of the batch.
        for (sample, field), value in zip(pairs, self._score(pairs) if pairs else [], strict=True):
            sample.scores[cfg.score_key(field)] = value
        if cfg.keep is not None:
            for sample in batch:
                if sample.ok:
                    self._keep(sample)
        return batch

    def _keep(self, sample: Sample) -> None:
        keep, key = self.config.keep, self.config.score_key(self.config.keep.field)
        value = sample.scores.get(key)
        if value is None or math.isnan(value):
            if keep.missing == "drop":
                sample.status, sample.error = DROPPED, f"{self.name}: {key} missing"
        elif self.threshold is not None and value < self.threshold:
            sample.status, sample.error = DROPPED, f"{self.name}: {key} {keep.reason()}"
