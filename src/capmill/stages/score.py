"""`clip_score`: media-text cosine for the AltText and each caption, plus the CLIPScore scale.

Scores are stored, never thresholded here (a `filter` stage decides later, so thresholds can
change without recomputing). Keys:

    clip:alt_text, clip:dsc, ...        cosine of the media and the text embedding (any scorer)
    clipscore:alt_text, clipscore:dsc   2.5 · max(cos(image, "A photo depicts " + text), 0)

The media is the sample's image, a video's sampled frames (the normalised mean of their
embeddings) or its audio, embedded by any MediaTextScorer that knows the kind: CLIP, SigLIP and
open_clip for images and videos, CLAP (`type: clap`) for audio, so one stage scores either; a
sample whose kind the scorer does not embed fails with the reason. For audio the CLIPScore scale
is taken on the plain cosine, without the photo prefix (CLAP's text encoder was trained on plain
sound descriptions): 2.5 · max(cos(audio, text), 0). Name the stage (`name: clap`) to key its
scores `clap:…` and `clapscore:…`.

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
from capmill.backends.base import MediaTextScorer
from capmill.components import BackendSpec, StageConfig
from capmill.keys import Key, StageIO
from capmill.metrics.embedding import CLIPSCORE_PREFIX, clipscore_from_cosine, unit_rows
from capmill.sample import AUDIO, DECODE_ERROR, Sample, field_texts
from capmill.stages.base import RunContext, Stage


class ClipScoreStageConfig(StageConfig):
    type: Literal["clip_score"] = "clip_score"
    # Any MediaTextScorer: CLIP, SigLIP, open_clip (images, videos); CLAP (audio).
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
        return StageIO(reads=[scorer_media(self.backend), *reads],
                       writes=[keys.score(f"{p}:{f}") for p in prefixes for f in fields])

    def backend_roles(self) -> dict[str, type]:
        return {"backend": scorer_role(self.backend)}


def scorer_media(backend) -> Key:
    """The decoded media a scorer reads: audio for an audio-only scorer (CLAP), else images (a
    scorer of both kinds, such as the test double, scores whatever each sample holds)."""
    from capmill.backends.embed import config_kinds

    kinds = config_kinds(backend)
    return keys.AUDIO if kinds == {AUDIO} else keys.IMAGE


def scorer_role(backend) -> type:
    """The protocol a scorer field needs, by what its config embeds (--models swaps in the tiny
    model of that role: CLAP for an audio scorer, CLIP otherwise)."""
    from capmill.backends.base import AudioTextScorer, ImageTextScorer

    return AudioTextScorer if scorer_media(backend) == keys.AUDIO else ImageTextScorer


class ClipScoreStage(Stage):
    config: ClipScoreStageConfig

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.backend = self.load_backend(self.config.backend, MediaTextScorer, "the clip_score stage")

    def process(self, batch: list[Sample]) -> list[Sample]:
        import numpy as np

        from capmill.backends.embed import embed_media

        cfg = self.config
        media, reasons = embed_media(self.backend, [s.media for s in batch])
        live: list[int] = []
        for i, (sample, why) in enumerate(zip(batch, reasons, strict=True)):
            if why is not None:
                sample.fail(DECODE_ERROR, f"clip_score: {why}")
            else:
                live.append(i)
        # One text list for the whole batch: (sample index, field, text); the prefixed copies of
        # image and video texts follow (audio takes the plain cosine: see the module docstring).
        jobs = [(i, name, text) for i in live for name, text in field_texts(batch[i], cfg.fields).items()]
        if not jobs:
            return batch
        texts = [text for _, _, text in jobs]
        prefixed_jobs = [j for j, (i, _, _) in enumerate(jobs) if batch[i].media.kind != AUDIO] if cfg.clipscore else []
        text_emb = unit_rows(self.backend.embed_texts(texts + [CLIPSCORE_PREFIX + texts[j] for j in prefixed_jobs]))
        rows = np.array([i for i, _, _ in jobs])
        n = len(jobs)
        cos = np.einsum("ij,ij->i", media[rows], text_emb[:n])
        scaled = clipscore_from_cosine(cos) if cfg.clipscore else None
        if prefixed_jobs:
            at = np.array(prefixed_jobs)
            scaled[at] = clipscore_from_cosine(np.einsum("ij,ij->i", media[rows[at]], text_emb[n:]))
        for j, (i, name, _) in enumerate(jobs):
            batch[i].scores[f"{cfg.key}:{name}"] = float(cos[j])
            if scaled is not None:
                batch[i].scores[f"{cfg.clipscore_key}:{name}"] = float(scaled[j])
        return batch
