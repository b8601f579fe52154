"""`clip_score`: image-text cosine for the AltText and each caption, plus the CLIPScore scale.

Scores are stored, never thresholded here (a `filter` stage decides later, so thresholds can
change without recomputing). Keys:

    clip:alt_text, clip:dsc, ...        cosine of the image and the text embedding (any scorer)
    clipscore:alt_text, clipscore:dsc   2.5 · max(cos(image, "A photo depicts " + text), 0)

CLIPScore follows Hessel et al., "CLIPScore: A Reference-free Evaluation Metric for Image
Captioning" (EMNLP 2021): the prefix, the weight w = 2.5 and the clip at 0 are theirs; the text is
truncated to the scorer's context (77 tokens for CLIP) by the backend. The paper uses CLIP
ViT-B/32; any ImageTextScorer works, but values are only comparable with the same model.

A field with no text (missing or empty after stripping) gets no score: an empty string has no
meaning to score. A model that returns a non-finite embedding gives a NaN score, stored as is;
`filter` treats NaN like a missing score and `capmill eval` leaves NaN out of its means and
counts it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from capmill import keys
from capmill.backends.base import ImageTextScorer
from capmill.components import BackendSpec, StageConfig
from capmill.keys import Key, StageIO
from capmill.metrics.embedding import CLIPSCORE_PREFIX, clipscore_from_cosine, unit_rows
from capmill.sample import DECODE_ERROR, Sample, field_texts
from capmill.stages.base import RunContext, Stage


class ClipScoreStageConfig(StageConfig):
    type: Literal["clip_score"] = "clip_score"
    # Any ImageTextScorer: CLIP, SigLIP, open_clip.
    backend: BackendSpec
    # Fields to score ("alt_text" and caption names); None scores the AltText and every caption.
    fields: list[str] | None = None
    # Prefix of the cosine keys: "clip" gives clip:dsc. Default: the stage's `name`, else "clip",
    # so a second scorer named e.g. "siglip" writes siglip:dsc beside clip:dsc.
    key: str | None = Field(None, min_length=1)
    # Also store the CLIPScore scale under `clipscore_key` (default: `key` + "score", so
    # "clipscore" for "clip"). It embeds every text twice (with and without the prefix); turn it
    # off when only the raw cosine matters.
    clipscore: bool = True
    clipscore_key: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _default_keys(self) -> ClipScoreStageConfig:
        if self.key is None:
            self.key = self.name or "clip"
        if self.clipscore_key is None:
            self.clipscore_key = f"{self.key}score"
        return self

    def build(self) -> ClipScoreStage:
        return ClipScoreStage(self)

    def io(self, available: frozenset[Key]) -> StageIO:
        if self.fields is not None:
            reads, fields = [keys.text(f) for f in self.fields], list(self.fields)
        else:  # the AltText and every caption there is when the stage runs
            reads = []
            fields = [k.name for k in sorted(available) if k == keys.ALT_TEXT or k.kind == keys.CAPTION]
        prefixes = [self.key, self.clipscore_key] if self.clipscore else [self.key]
        return StageIO(reads=[keys.IMAGE, *reads], writes=[keys.score(f"{p}:{f}") for p in prefixes for f in fields])

    def backend_roles(self) -> dict[str, type]:
        return {"backend": ImageTextScorer}


class ClipScoreStage(Stage):
    config: ClipScoreStageConfig

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.backend = self.load_backend(self.config.backend, ImageTextScorer, "the clip_score stage")

    def process(self, batch: list[Sample]) -> list[Sample]:
        import numpy as np

        cfg = self.config
        live: list[Sample] = []
        for sample in batch:
            if sample.image.image is None:
                sample.fail(DECODE_ERROR, "clip_score needs a decoded image (image.decode is off or decoding failed)")
            else:
                live.append(sample)
        if not live:
            return batch
        # One text list for the whole batch: (sample index, field, text); the prefixed copies follow.
        jobs = [(i, name, text) for i, s in enumerate(live) for name, text in field_texts(s, cfg.fields).items()]
        texts = [text for _, _, text in jobs]
        if cfg.clipscore:
            texts += [CLIPSCORE_PREFIX + text for text in texts]
        images = unit_rows(self.backend.embed_images([s.image.image for s in live]))
        if not texts:
            return batch
        text_emb = unit_rows(self.backend.embed_texts(texts))
        n = len(jobs)
        rows = np.array([i for i, _, _ in jobs])
        cos = np.einsum("ij,ij->i", images[rows], text_emb[:n])
        prefixed = clipscore_from_cosine(np.einsum("ij,ij->i", images[rows], text_emb[n:])) if cfg.clipscore else None
        for j, (i, name, _) in enumerate(jobs):
            live[i].scores[f"{cfg.key}:{name}"] = float(cos[j])
            if prefixed is not None:
                live[i].scores[f"{cfg.clipscore_key}:{name}"] = float(prefixed[j])
        return batch
