"""NoC alignment-level control of a caption prompt.

"Noise-aware Learning from Web-crawled Image-Text Data for Image Captioning" (NoC, Kang et al.,
ICCV 2023) trains a captioner on all web pairs, conditioned on each pair's alignment level (its
image–AltText cosine binned over the dataset, `align_bin`), and decodes at the highest level. The
caption stage offers the same control for any captioner (`control:` in its config):

- `mode: token` puts a control token (`<align_7>` by default) before the prompt — for a captioner
  trained with such tokens (a plain text marker: a backend neutralises the model's own special
  tokens in prompts, so a token registered as special would be broken);
- `mode: prompt` picks an instruction by level from `prompts/control/noc.yaml` (loose to strict),
  placed in the format's `{control}` slot, or after the prompt when the format has none — for a
  prompted VLM, which no bin token means anything to.

`level: top` decodes every sample at the highest bin (NoC's inference); `level: own` uses each
sample's own bin (to write bin-conditioned training text, or to study the levels); an integer
fixes the bin. A sample without a bin (no AltText, so no cosine) is captioned at the top bin,
recorded in the caption's `meta["control"]`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from capmill.components import Strict
from capmill.errors import ConfigError


class AlignControl(Strict):
    # The score holding each sample's bin (align_bin writes it).
    score: str = "align_bin"
    # The number of bins align_bin was fitted with (NoC: 8).
    bins: int = Field(8, ge=2)
    # "top" (NoC's decoding), "own" (each sample's bin) or a fixed bin.
    level: Literal["own", "top"] | int = "top"
    mode: Literal["prompt", "token"] = "prompt"
    # mode token: the text put before the prompt, with {bin} filled in.
    token: str = "<align_{bin}>"
    # mode prompt: the levels template (a built-in name under prompts/control/ or a YAML path).
    template: str = "noc"

    @model_validator(mode="after")
    def _level_in_range(self) -> AlignControl:
        if isinstance(self.level, int) and not 0 <= self.level < self.bins:
            raise ValueError(f"control.level {self.level} is not a bin of 0 … {self.bins - 1}")
        if "{bin}" not in self.token:
            raise ValueError("control.token must contain {bin}")
        return self

    def bin_for(self, scores: dict[str, float]) -> tuple[int, bool]:
        """(the bin to caption at, whether the sample's own bin was missing)."""
        top = self.bins - 1
        if self.level == "top":
            return top, False
        if isinstance(self.level, int):
            return self.level, False
        value = scores.get(self.score)
        if value is None or math.isnan(value):
            return top, True
        return min(max(int(value), 0), top), False


class Controller:
    """Applies an `AlignControl` to format prompts."""

    def __init__(self, config: AlignControl, prompt_dirs: list[str] | None = None):
        self.config = config
        self.levels: list[str] = []
        if config.mode == "prompt":
            from capmill.prompts.templates import load_template

            template = load_template("control", config.template, prompt_dirs)
            levels = template.options.get("levels")
            if not isinstance(levels, list) or not levels or not all(isinstance(x, str) for x in levels):
                raise ConfigError(f"control template {template.prompt_id} needs options.levels: a list of instructions")
            self.levels = levels

    def text(self, bin_: int) -> str:
        """The control text of a bin: the token, or the level's instruction."""
        if self.config.mode == "token":
            return self.config.token.format(bin=bin_)
        return self.levels[min(bin_ * len(self.levels) // self.config.bins, len(self.levels) - 1)]

    def apply(self, prompt: str, bin_: int, has_slot: bool) -> str:
        """`prompt` (already rendered, with the control text in its slot when it has one) with the
        control added where the format has no slot."""
        if has_slot:
            return prompt
        text = self.text(bin_)
        return f"{text} {prompt}" if self.config.mode == "token" else f"{prompt}\n\n{text}"

    def meta(self, bin_: int, missing: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"bin": bin_, "level": self.config.level, "mode": self.config.mode}
        if missing:
            out["missing"] = True
        return out
