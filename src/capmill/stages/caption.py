"""The caption stage: every requested format for every image, in one backend call per batch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from capmill.backends.base import Generation, VisionLanguageModel, VLMRequest, require
from capmill.components import BackendSpec, StageConfig
from capmill.prompts import PromptTemplate, delimited, load_template
from capmill.sample import BACKEND_ERROR, DECODE_ERROR, Caption, Sample
from capmill.stages.base import RunContext, Stage

FORMAT_SLOTS = {"alt_text", "word_count"}


class CaptionStageConfig(StageConfig):
    type: Literal["caption"] = "caption"
    backend: BackendSpec
    # Format names (built-in: see `prompts/formats/`) or paths to your own format YAML files.
    formats: list[str] = Field(min_length=1)
    # Folders searched for format files before the built-in ones.
    prompt_dirs: list[str] = Field(default_factory=list)
    # Caption key for each format; `{format}` and `{model}` are filled in. Change it to keep
    # captions of several models side by side, e.g. "{format}_smolvlm".
    store_as: str = "{format}"
    # Candidates per format; the first is the caption, the rest are kept in its meta.
    n: int = Field(1, ge=1)
    # Characters of AltText allowed into a prompt.
    alt_text_max_chars: int = Field(1000, ge=0)

    def build(self) -> CaptionStage:
        return CaptionStage(self)

    def templates(self) -> list[PromptTemplate]:
        return [load_template("formats", f, self.prompt_dirs).check_slots(FORMAT_SLOTS) for f in self.formats]


class CaptionStage(Stage):
    config: CaptionStageConfig

    def __init__(self, config: CaptionStageConfig):
        super().__init__(config)
        # Templates are checked when the stage is built, so a bad slot fails before any model loads.
        self.formats = config.templates()

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.backend = require(self.config.backend.build(), VisionLanguageModel, "the caption stage")
        self.backend.load()

    def teardown(self) -> None:
        backend = getattr(self, "backend", None)
        if backend is not None:
            backend.close()

    def key_for(self, fmt: PromptTemplate) -> str:
        return self.config.store_as.format(format=fmt.name, model=self.backend.model_id.rsplit("/", 1)[-1])

    def process(self, batch: list[Sample]) -> list[Sample]:
        cfg = self.config
        requests: list[VLMRequest] = []
        owners: list[tuple[Sample, PromptTemplate]] = []
        for sample in batch:
            if sample.image.image is None:
                sample.fail(DECODE_ERROR, "caption needs a decoded image (image.decode is off or decoding failed)")
                continue
            alt = delimited(sample.alt_text, cfg.alt_text_max_chars)
            for fmt in self.formats:
                target = fmt.options.get("target", {})
                slots = {"alt_text": alt, "word_count": target.get("max", 50)}
                requests.append(VLMRequest(
                    prompt=fmt.render(**slots),
                    images=[sample.image.image],
                    n=cfg.n,
                    system=fmt.render_system(**slots),
                    tag=f"{sample.key}:{fmt.name}",
                ))
                owners.append((sample, fmt))
        if not requests:
            return batch
        generations = self.backend.generate(requests)
        for (sample, fmt), gen in zip(owners, generations, strict=True):
            self._store(sample, fmt, gen)
        return batch

    def _store(self, sample: Sample, fmt: PromptTemplate, gen: Generation) -> None:
        texts = [t.strip() for t in gen.texts]
        if gen.error is not None or not texts or not texts[0]:
            sample.fail(BACKEND_ERROR, f"{fmt.name}: {gen.error or 'empty caption'}")
            return
        meta = dict(gen.meta)
        if len(texts) > 1:
            meta["candidates"] = texts[1:]
        key = self.key_for(fmt)
        sample.captions[key] = Caption(text=texts[0], source=key, model=self.backend.model_id,
                                       prompt_id=fmt.prompt_id, meta=meta)
