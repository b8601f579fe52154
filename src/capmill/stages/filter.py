"""`filter`: drop samples by thresholds on stored scores or caption lengths, or keep the best
share of the input by a score.

Scores are computed by earlier stages (or an earlier run) and kept in the record; this stage
only compares. A threshold (`min`, `max`) is decided per sample. A share (`top_fraction: 0.12`:
the best 12%, as Compress & Align keeps of its reward-rated data; `percentile: 88`: at or above
the 88th percentile) depends on the whole input, so it is decided in the fit step
(`capmill.fit`): the fit reads the score of every sample of its input and stores the cut-off,
which the stream compares like a threshold. The fit reads scores the input already holds — a
capmill output of an earlier run (`input: {type: capmill}`, or `fit_input`) — since a score
written by an earlier stage of the same run does not exist before the run streams; for a reward
score computed in the same run, keep the share in the scoring stage (`reward_score` with
`keep:`). A dropped sample gets `status="dropped"` and `error` = the rule that dropped it,
written without per-sample values ("filter: clip:alt_text < 0.3") so the run's `_stats` count
drops by reason; with `output.rejects: true` the dropped records go to `_rejects/`.

Rules are checked in order and the first failing one names the reason. A score that is missing
or NaN fails its rule unless `missing: keep`: a sample whose quality could not be measured is not
presumed good.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from capmill import keys
from capmill.components import StageConfig, Strict
from capmill.errors import ConfigError
from capmill.fit.cutoff import finite, percentile_cutoff, top_fraction_cutoff
from capmill.fit.request import FitRequest
from capmill.keys import Key, StageIO
from capmill.readers.run_output import RunOutputInput
from capmill.sample import DROPPED, Sample
from capmill.stages.base import RunContext, Stage

_WORD = re.compile(r"\S+")

# Length units a rule may measure a caption in.
LENGTH_UNITS = {
    "words": lambda text: len(_WORD.findall(text)),
    "chars": len,
}


class FilterRule(Strict):
    """One rule: a threshold on a score (`score: clip:alt_text`) or on a caption's length
    (`length: dsc`, `unit: words`), or the best share of the input by a score (`top_fraction`
    or `percentile`, fitted on the whole input). Bounds are inclusive: a value equal to `min`
    (or to the fitted cut-off) is kept."""

    # Options added later stay out of the dump while unset: configs without them keep their hash.
    omit_when_none: ClassVar[frozenset[str]] = frozenset({"top_fraction", "percentile"})

    score: str | None = None
    length: str | None = None
    unit: Literal["words", "chars"] = "words"
    min: float | None = None
    max: float | None = None
    # Keep the best share of the input by `score`: a fraction in (0, 1], or a percentile to be
    # at or above (88 keeps about the top 12%). Fitted on the whole input before the run.
    top_fraction: float | None = Field(None, gt=0, le=1)
    percentile: float | None = Field(None, ge=0, le=100)
    missing: Literal["drop", "keep"] = "drop"

    @model_validator(mode="after")
    def _one_target(self) -> FilterRule:
        if (self.score is None) == (self.length is None):
            raise ValueError("a filter rule needs exactly one of `score` (a score key) or `length` (a caption field)")
        shares = [n for n in ("top_fraction", "percentile") if getattr(self, n) is not None]
        if shares:
            if self.score is None:
                raise ValueError(f"{shares[0]} keeps the best share by a score: give `score`, not `length`")
            if len(shares) > 1 or self.min is not None or self.max is not None:
                raise ValueError(f"filter rule on {self.target}: give one of min/max, top_fraction or percentile")
        elif self.min is None and self.max is None:
            raise ValueError(f"filter rule on {self.target} needs `min`, `max` or both (or top_fraction / percentile)")
        return self

    @property
    def fitted(self) -> bool:
        """Whether the rule's cut-off is decided on the whole input (the fit step)."""
        return self.top_fraction is not None or self.percentile is not None

    def cutoff(self, values: list[float]) -> float | None:
        if self.top_fraction is not None:
            return top_fraction_cutoff(values, self.top_fraction)
        return percentile_cutoff(values, self.percentile)

    def share_reason(self) -> str:
        if self.top_fraction is not None:
            return f"filter: {self.target} not in the top {100 * self.top_fraction:g}%"
        return f"filter: {self.target} below its {self.percentile:g}th percentile"

    @property
    def reads(self) -> Key:
        return keys.score(self.score) if self.score is not None else keys.text(self.length)

    @property
    def target(self) -> str:
        return self.score if self.score is not None else f"{self.length} {self.unit}"

    def value(self, sample: Sample) -> float | None:
        if self.score is not None:
            v = sample.scores.get(self.score)
            return None if v is None or math.isnan(v) else v
        text = sample.text(self.length)
        return None if text is None else float(LENGTH_UNITS[self.unit](text))

    def reason(self, sample: Sample, cutoff: float | None = None) -> str | None:
        """Why the sample fails this rule (with its fitted `cutoff`), or None when it passes."""
        v = self.value(sample)
        if v is None:
            return None if self.missing == "keep" else f"filter: {self.target} missing"
        if self.fitted:
            return self.share_reason() if cutoff is None or v < cutoff else None
        if self.min is not None and v < self.min:
            return f"filter: {self.target} < {self.min:g}"
        if self.max is not None and v > self.max:
            return f"filter: {self.target} > {self.max:g}"
        return None


class FilterStageConfig(StageConfig):
    omit_when_none: ClassVar[frozenset[str]] = frozenset({"name", "fit_input", "fit_samples"})

    type: Literal["filter"] = "filter"
    rules: list[FilterRule] = Field(min_length=1)
    # Input the share rules fit on instead of the run's own (a capmill output with the scores).
    fit_input: RunOutputInput | None = None
    # Samples the fit reads, spread evenly over the shards; None: the whole input.
    fit_samples: int | None = Field(None, ge=1)

    def build(self) -> FilterStage:
        return FilterStage(self)

    def io(self, available: frozenset[Key]) -> StageIO:
        # A rule on a key nothing writes would drop every sample (or, with `missing: keep`,
        # none): either way a mistake, so every rule's key is a required read.
        return StageIO(reads=[rule.reads for rule in self.rules])


class FilterStage(Stage):
    config: FilterStageConfig

    def __init__(self, config: FilterStageConfig):
        super().__init__(config)
        self.cutoffs: dict[int, float] = {}  # fitted share rules' cut-offs, set in setup

    @property
    def needs_fit(self) -> bool:
        return any(rule.fitted for rule in self.config.rules)

    def fit_request(self) -> FitRequest:
        cfg = self.config
        return FitRequest(input=cfg.fit_input, scores=tuple(r.score for r in cfg.rules if r.fitted), alt_text=False,
                          max_samples=cfg.fit_samples)

    def fit(self, ctx: RunContext, samples: Iterator[Sample]) -> dict[str, Any]:
        rules = [(i, rule) for i, rule in enumerate(self.config.rules) if rule.fitted]
        values: dict[int, list[float]] = {i: [] for i, _ in rules}
        n = 0
        for sample in samples:
            n += 1
            for i, rule in rules:
                values[i].append(sample.scores.get(rule.score, math.nan))
        cutoffs, fitted_on = {}, {}
        for i, rule in rules:
            measured = finite(values[i])
            if not measured:
                raise ConfigError(
                    f"filter: rule {i} keeps a share of the input by scores[{rule.score!r}], but none of the {n} samples "
                    f"the fit read has that score. A share is fitted on the whole input before the run, so the score "
                    f"must already be in it: filter the output of the run that scored it (input: {{type: capmill, "
                    f"path: ...}}, or give the filter that output as fit_input), or keep the share in the scoring stage "
                    f"(reward_score with keep:)")
            cutoffs[str(i)] = rule.cutoff(measured)
            fitted_on[str(i)] = len(measured)
        return {"cutoffs": cutoffs, "fitted_on": fitted_on, "samples": n}

    def fit_summary(self, state: dict[str, Any]) -> str:
        parts = []
        for i, cutoff in state["cutoffs"].items():
            rule = self.config.rules[int(i)]
            share = f"top {100 * rule.top_fraction:g}%" if rule.top_fraction is not None else f"≥ {rule.percentile:g}th percentile"
            parts.append(f"{rule.score} {share}: keeps ≥ {cutoff:.4g} (fitted on {state['fitted_on'][i]} of "
                         f"{state['samples']} samples)")
        return "; ".join(parts)

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.cutoffs = {int(i): c for i, c in (self.fit_state or {}).get("cutoffs", {}).items()}

    def process_one(self, sample: Sample) -> Sample:
        for i, rule in enumerate(self.config.rules):
            why = rule.reason(sample, self.cutoffs.get(i))
            if why is not None:
                sample.status, sample.error = DROPPED, why
                break
        return sample
