"""`text_similarity`: how close each caption stays to the AltText, with a sentence embedder.

Stores `textsim:FIELD` = cosine(AltText, caption) for each caption (never for the AltText itself).
A low value flags a caption that lost the AltText's content (a fusion that dropped the names, a
caption of the wrong image); a value near 1 flags a caption that merely copies the AltText.
The offline default model is all-MiniLM-L6-v2 through sentence-transformers; samples without
AltText, or captions that are empty, get no score.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from capmill.backends.base import TextEmbedder
from capmill.components import BackendSpec, StageConfig
from capmill.metrics.embedding import unit_rows
from capmill.sample import Sample, field_texts
from capmill.stages.base import RunContext, Stage


def _default_embedder() -> dict:
    return {"type": "sentence_transformers", "model": "sentence-transformers/all-MiniLM-L6-v2"}


class TextSimilarityStageConfig(StageConfig):
    type: Literal["text_similarity"] = "text_similarity"
    backend: BackendSpec = Field(default_factory=_default_embedder)
    # Caption fields compared with the AltText; None compares every caption.
    fields: list[str] | None = None
    key: str = Field("textsim", min_length=1)

    def build(self) -> TextSimilarityStage:
        return TextSimilarityStage(self)


class TextSimilarityStage(Stage):
    config: TextSimilarityStageConfig

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.backend = self.load_backend(self.config.backend, TextEmbedder, "the text_similarity stage")

    def process(self, batch: list[Sample]) -> list[Sample]:
        import numpy as np

        cfg = self.config
        pairs: list[tuple[Sample, str, str, str]] = []  # sample, field, alt text, caption
        for sample in batch:
            texts = field_texts(sample, cfg.fields if cfg.fields is not None else list(sample.captions))
            alt = sample.alt_text
            if alt is None or not alt.strip():
                continue
            pairs.extend((sample, name, alt, text) for name, text in texts.items() if name != "alt_text")
        if not pairs:
            return batch
        # Each distinct text is embedded once: the AltText is shared by every caption of a sample.
        unique = list(dict.fromkeys(t for _, _, alt, cap in pairs for t in (alt, cap)))
        index = {t: i for i, t in enumerate(unique)}
        emb = unit_rows(self.backend.embed(unique))
        a = emb[[index[alt] for _, _, alt, _ in pairs]]
        c = emb[[index[cap] for _, _, _, cap in pairs]]
        cos = np.einsum("ij,ij->i", a, c)
        for (sample, name, _, _), value in zip(pairs, cos, strict=True):
            sample.scores[f"{cfg.key}:{name}"] = float(value)
        return batch
