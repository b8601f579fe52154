"""The caption mix a training target reads, decided at export time.

"Revisit Large-Scale Image-Caption Data in Pre-training Multimodal Foundation Models" (Apple,
ICLR 2025) finds each consumer prefers a different blend: CLIP does best with about half
synthetic captions (short ones) and half AltText, multimodal LLMs with the dense DSC+ alone,
diffusion models with dense captions next to AltText. VeCLIP (Apple, ECCV 2024) picks AltText or
its enriched caption 50/50. Keeping every caption in the run output and choosing here means a
ratio can be swept without recaptioning.

Draws are seeded per (seed, sample key), never by position, so re-exporting — in any shard
order, with any number of workers — gives every sample the same text.

Two kinds of fallback change the mix, and both are counted, never silent:
- the draw wanted a synthetic caption the sample does not have (or the AltText it lacks): the
  other side is used (`mix fallback`);
- the drawn caption is itself a fusion fallback (the `fuse` stage rejected the LLM's output and
  stored its input instead, `meta["fallback"]`; a VeCLIP sample then carries its short caption
  under `veclip`): `fallback` decides what is written — the stored text (default), the AltText,
  another caption, or nothing (the sample is dropped from the export).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pydantic import Field

from capmill.components import Strict
from capmill.sample import Sample

ALT_TEXT = "alt_text"
DROP = "drop"


class MixConfig(Strict):
    # Probability that a sample's text is a synthetic caption rather than its AltText.
    p_synthetic: float = Field(0.5, ge=0, le=1)
    # Caption keys drawn uniformly when the draw is synthetic (those the sample has).
    synthetic: list[str] = Field(default_factory=lambda: ["ssc", "dsc"], min_length=1)
    # Prepend the AltText to a drawn synthetic caption ("ALT; CAPTION"), the training text of
    # TL;DR ("Too Large; Data Reduction for Vision-Language Pre-Training", ICCV 2023).
    join_alt_text: bool = False
    join_separator: str = "; "
    # What a drawn caption that is a fusion fallback becomes: None keeps the stored text (the
    # fuse stage's input, e.g. VeCLIP's short caption), "alt_text" the AltText, "drop" leaves the
    # sample out of the export, any other name that caption (e.g. "ssc").
    fallback: str | None = None

    def requested(self) -> dict[str, float]:
        """The share of samples each text source is asked for (before any fallback), named as the
        report names what was written ("alt_text+NAME" when joined)."""
        joined = f"{ALT_TEXT}+" if self.join_alt_text else ""
        out = {f"{joined}{name}": self.p_synthetic / len(self.synthetic) for name in self.synthetic}
        if self.p_synthetic < 1:
            out[ALT_TEXT] = 1 - self.p_synthetic
        return out


# Per-target defaults (the paper's findings above); `--set mix.…` overrides any of them.
TARGET_MIX: dict[str, MixConfig] = {
    "clip": MixConfig(p_synthetic=0.5, synthetic=["ssc", "dsc"]),
    "mllm": MixConfig(p_synthetic=1.0, synthetic=["dsc_plus"]),
    "diffusion": MixConfig(p_synthetic=0.5, synthetic=["dsc", "dsc_plus"]),
    "dreamlip": MixConfig(p_synthetic=1.0, synthetic=["dsc_plus", "dsc"]),
    # Grounding data: the region captions are the point; the image-level text is the AltText
    # unless the mix asks for a caption.
    "grounding": MixConfig(p_synthetic=0.0, synthetic=["dsc"]),
    # Video LLMs: detailed video captions (see capmill.export.video).
    "llava_video": MixConfig(p_synthetic=1.0, synthetic=["sharegpt4video", "long_caption", "vdc_detailed",
                                                          "howtocaption", "dsc_plus"]),
    # Audio-text contrastive training: the audio methods' captions (capmill.export.audio).
    "clap": MixConfig(p_synthetic=1.0, synthetic=["audiosetcaps", "clap_refine", "autocap", "dsc", "ssc"]),
}


def sample_rng(seed: int, key: str, purpose: str) -> random.Random:
    # A str seed is hashed with SHA-512 by `random`, so the stream is the same in every
    # process and Python run (unlike hash()).
    return random.Random(f"{seed}\x00{purpose}\x00{key}")


@dataclass(frozen=True, slots=True)
class Draw:
    """What one sample gets. `source` names the text written ("" when none, or when dropped);
    `label` is how the export report counts it."""

    source: str
    text: str
    label: str
    # The draw wanted the other side (synthetic/AltText), which the sample lacks.
    mix_fallback: bool = False
    # The drawn caption whose stored text was a fusion fallback, when there was one.
    fusion_fallback_of: str | None = None
    dropped: bool = False


class MixSampler:
    def __init__(self, config: MixConfig, seed: int = 0):
        self.config = config
        self.seed = seed

    def choose(self, key: str, texts: dict[str, str]) -> str:
        """The name of the text to use for sample `key`, given its non-empty texts by name
        (`alt_text` plus caption keys). A missing side falls back to the other, so every
        sample with any text gets one; returns "" when it has none."""
        return self._choose(key, texts)[0]

    def _choose(self, key: str, texts: dict[str, str]) -> tuple[str, bool]:
        rng = sample_rng(self.seed, key, "mix")
        synthetic = [name for name in self.config.synthetic if texts.get(name)]
        want_synthetic = rng.random() < self.config.p_synthetic
        pick = rng.randrange(len(synthetic)) if synthetic else 0  # drawn always: stable streams
        if (want_synthetic or not texts.get(ALT_TEXT)) and synthetic:
            return synthetic[pick], not want_synthetic
        if texts.get(ALT_TEXT):
            return ALT_TEXT, want_synthetic
        return "", False

    def draw(self, sample: Sample) -> Draw:
        """The training text of `sample`, with every fallback on the way named."""
        cfg = self.config
        texts = texts_of(sample)
        chosen, mix_fallback = self._choose(sample.key, texts)
        if not chosen:
            return Draw("", "", "", mix_fallback)
        source, text, label, of = chosen, texts[chosen], chosen, None
        caption = sample.captions.get(chosen)
        if caption is not None and caption.meta.get("fallback"):
            of = chosen
            replacement = cfg.fallback
            if replacement == DROP:
                return Draw("", "", f"{chosen} (fusion fallback, dropped)", mix_fallback, of, dropped=True)
            if replacement is not None and texts.get(replacement):
                source, text, label = replacement, texts[replacement], f"{replacement} (for {chosen}: fusion fallback)"
            else:
                label = f"{chosen} (fusion fallback: its input kept)"
        if mix_fallback:
            label = f"{label} (mix fallback: {'no synthetic caption' if source == ALT_TEXT else 'no AltText'})"
        if cfg.join_alt_text and source != ALT_TEXT and texts.get(ALT_TEXT):
            source, text = f"{ALT_TEXT}+{source}", f"{texts[ALT_TEXT]}{cfg.join_separator}{text}"
            label = f"{ALT_TEXT}+{label}"
        return Draw(source, text, label, mix_fallback, of)

    def text_for(self, sample: Sample) -> tuple[str, str, dict[str, str]]:
        """(source name, training text, every text by name) for `sample`. With `join_alt_text`
        a synthetic draw reads "ALT; CAPTION" and its source "alt_text+NAME"."""
        d = self.draw(sample)
        return d.source, d.text, texts_of(sample)


def texts_of(sample: Sample) -> dict[str, str]:
    texts = {name: c.text.strip() for name, c in sample.captions.items() if c.text and c.text.strip()}
    if sample.alt_text and sample.alt_text.strip():
        texts[ALT_TEXT] = sample.alt_text.strip()
    return texts
