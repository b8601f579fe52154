"""`filter`: drop samples by thresholds on stored scores or caption lengths.

Scores are computed by earlier stages (or an earlier run) and kept in the record; this stage
only compares. A dropped sample gets `status="dropped"` and `error` = the rule that dropped it,
written without per-sample values ("filter: clip:alt_text < 0.3") so the run's `_stats` count
drops by reason; with `output.rejects: true` the dropped records go to `_rejects/`.

Rules are checked in order and the first failing one names the reason. A score that is missing
or NaN fails its rule unless `missing: keep`: a sample whose quality could not be measured is not
presumed good.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field, model_validator

from capmill import keys
from capmill.components import StageConfig, Strict
from capmill.keys import Key, StageIO
from capmill.sample import DROPPED, Sample
from capmill.stages.base import Stage

_WORD = re.compile(r"\S+")

# Length units a rule may measure a caption in.
LENGTH_UNITS = {
    "words": lambda text: len(_WORD.findall(text)),
    "chars": len,
}


class FilterRule(Strict):
    """One threshold: on a score (`score: clip:alt_text`) or on a caption's length
    (`length: dsc`, `unit: words`). Bounds are inclusive: a value equal to `min` is kept."""

    score: str | None = None
    length: str | None = None
    unit: Literal["words", "chars"] = "words"
    min: float | None = None
    max: float | None = None
    missing: Literal["drop", "keep"] = "drop"

    @model_validator(mode="after")
    def _one_target(self) -> FilterRule:
        if (self.score is None) == (self.length is None):
            raise ValueError("a filter rule needs exactly one of `score` (a score key) or `length` (a caption field)")
        if self.min is None and self.max is None:
            raise ValueError(f"filter rule on {self.target} needs `min`, `max` or both")
        return self

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

    def reason(self, sample: Sample) -> str | None:
        """Why the sample fails this rule, or None when it passes."""
        v = self.value(sample)
        if v is None:
            return None if self.missing == "keep" else f"filter: {self.target} missing"
        if self.min is not None and v < self.min:
            return f"filter: {self.target} < {self.min:g}"
        if self.max is not None and v > self.max:
            return f"filter: {self.target} > {self.max:g}"
        return None


class FilterStageConfig(StageConfig):
    type: Literal["filter"] = "filter"
    rules: list[FilterRule] = Field(min_length=1)

    def build(self) -> FilterStage:
        return FilterStage(self)

    def io(self, available: frozenset[Key]) -> StageIO:
        # A rule on a key nothing writes would drop every sample (or, with `missing: keep`,
        # none): either way a mistake, so every rule's key is a required read.
        return StageIO(reads=[rule.reads for rule in self.rules])


class FilterStage(Stage):
    config: FilterStageConfig

    def process_one(self, sample: Sample) -> Sample:
        for rule in self.config.rules:
            why = rule.reason(sample)
            if why is not None:
                sample.status, sample.error = DROPPED, why
                break
        return sample
