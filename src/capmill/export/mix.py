"""The caption mix a training target reads, decided at export time.

"Revisit Large-Scale Image-Caption Data in Pre-training Multimodal Foundation Models" (Apple,
ICLR 2025) finds each consumer prefers a different blend: CLIP does best with about half
synthetic captions (short ones) and half AltText, multimodal LLMs with the dense DSC+ alone,
diffusion models with dense captions next to AltText. VeCLIP (Apple, ECCV 2024) picks AltText or
its enriched caption 50/50. Keeping every caption in the run output and choosing here means a
ratio can be swept without recaptioning.

Draws are seeded per (seed, sample key), never by position, so re-exporting — in any shard
order, with any number of workers — gives every sample the same text.
"""

from __future__ import annotations

import random

from pydantic import Field

from capmill.components import Strict
from capmill.sample import Sample

ALT_TEXT = "alt_text"


class MixConfig(Strict):
    # Probability that a sample's text is a synthetic caption rather than its AltText.
    p_synthetic: float = Field(0.5, ge=0, le=1)
    # Caption keys drawn uniformly when the draw is synthetic (those the sample has).
    synthetic: list[str] = Field(default_factory=lambda: ["ssc", "dsc"], min_length=1)
    # Prepend the AltText to a drawn synthetic caption ("ALT; CAPTION"), the training text of
    # TL;DR ("Too Large; Data Reduction for Vision-Language Pre-Training", ICCV 2023).
    join_alt_text: bool = False
    join_separator: str = "; "


# Per-target defaults (the paper's findings above); `--set mix.…` overrides any of them.
TARGET_MIX: dict[str, MixConfig] = {
    "clip": MixConfig(p_synthetic=0.5, synthetic=["ssc", "dsc"]),
    "mllm": MixConfig(p_synthetic=1.0, synthetic=["dsc_plus"]),
    "diffusion": MixConfig(p_synthetic=0.5, synthetic=["dsc", "dsc_plus"]),
    "dreamlip": MixConfig(p_synthetic=1.0, synthetic=["dsc_plus", "dsc"]),
    # Video LLMs: detailed video captions (see capmill.export.video).
    "llava_video": MixConfig(p_synthetic=1.0, synthetic=["sharegpt4video", "long_caption", "vdc_detailed",
                                                          "howtocaption", "dsc_plus"]),
}


def sample_rng(seed: int, key: str, purpose: str) -> random.Random:
    # A str seed is hashed with SHA-512 by `random`, so the stream is the same in every
    # process and Python run (unlike hash()).
    return random.Random(f"{seed}\x00{purpose}\x00{key}")


class MixSampler:
    def __init__(self, config: MixConfig, seed: int = 0):
        self.config = config
        self.seed = seed

    def choose(self, key: str, texts: dict[str, str]) -> str:
        """The name of the text to use for sample `key`, given its non-empty texts by name
        (`alt_text` plus caption keys). A missing side falls back to the other, so every
        sample with any text gets one; returns "" when it has none."""
        rng = sample_rng(self.seed, key, "mix")
        synthetic = [name for name in self.config.synthetic if texts.get(name)]
        want_synthetic = rng.random() < self.config.p_synthetic
        pick = rng.randrange(len(synthetic)) if synthetic else 0  # drawn always: stable streams
        if (want_synthetic or not texts.get(ALT_TEXT)) and synthetic:
            return synthetic[pick]
        return ALT_TEXT if texts.get(ALT_TEXT) else ""

    def text_for(self, sample: Sample) -> tuple[str, str, dict[str, str]]:
        """(source name, training text, every text by name) for `sample`. With `join_alt_text`
        a synthetic draw reads "ALT; CAPTION" and its source "alt_text+NAME"."""
        texts = texts_of(sample)
        chosen = self.choose(sample.key, texts)
        if not chosen:
            return "", "", texts
        if self.config.join_alt_text and chosen != ALT_TEXT and texts.get(ALT_TEXT):
            return f"{ALT_TEXT}+{chosen}", f"{texts[ALT_TEXT]}{self.config.join_separator}{texts[chosen]}", texts
        return chosen, texts[chosen], texts


def texts_of(sample: Sample) -> dict[str, str]:
    texts = {name: c.text.strip() for name, c in sample.captions.items() if c.text and c.text.strip()}
    if sample.alt_text and sample.alt_text.strip():
        texts[ALT_TEXT] = sample.alt_text.strip()
    return texts
