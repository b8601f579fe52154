"""The caption stage: every requested format for every image, in one backend call per batch.

Formats are data (`prompts/formats/*.yaml`, or a user's own YAML): a template, an optional
length target and a policy for a miss — "Revisit Large-Scale Image-Caption Data in Pre-training
Multimodal Foundation Models" (Apple, ICLR 2025) writes SSC, DSC and DSC+ from one controllable
captioner. All formats of all samples in a batch go to the backend as one request list, each
request carrying the sample's one decoded image object, so a backend can batch across samples
and formats and preprocess each image once. Captions that miss their length target are
regenerated together (one more batched call per retry round) with a firmer instruction, then
trimmed at a sentence boundary; `meta["length"]` records which happened.

Videos go through the same stage: a format's `media.video` prompt (same format name, prompt id
"NAME@V:video") with the sample's sampled frames and their timestamps as the request's video.
A format with no prompt for a sample's kind is skipped for that sample and named in its
`meta["formats_without_prompt"]`; a sample none of the formats can caption fails with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from capmill import keys
from capmill.backends.base import GenerationParams, VisionLanguageModel, VLMRequest
from capmill.components import BackendSpec, StageConfig
from capmill.errors import ConfigError
from capmill.keys import Key, StageIO
from capmill.prompts import PromptTemplate, delimited, load_template
from capmill.sample import BACKEND_ERROR, DECODE_ERROR, IMAGE, STAGE_ERROR, VIDEO, Caption, Sample
from capmill.stages.base import RunContext, Stage
from capmill.text.length import (
    FIRST_TRY,
    REGENERATED,
    TRIMMED,
    LengthTarget,
    MissPolicy,
    counter_for,
    length_meta,
    length_settings,
    trim,
)

FORMAT_SLOTS = {"alt_text", "word_count"}
# Slots a video prompt may use besides those.
VIDEO_SLOTS = {"seconds", "frames"}


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
    # Overrides every format's `on_miss.retries` (0: trim at once, never regenerate).
    retries: int | None = Field(None, ge=0)
    # Decoding settings; None uses the backend's configured defaults.
    params: GenerationParams | None = None

    def build(self) -> CaptionStage:
        return CaptionStage(self)

    def templates(self) -> list[PromptTemplate]:
        out = []
        for name in self.formats:
            template = load_template("formats", name, self.prompt_dirs)
            for kind in template.all_kinds:
                template.for_kind(kind).check_slots(FORMAT_SLOTS | (VIDEO_SLOTS if kind == VIDEO else set()))
            out.append(template)
        return out

    def caption_key(self, format_name: str) -> str:
        """The caption key of one format: `store_as` with `{format}` and `{model}` (the last part
        of the backend's model id) filled in."""
        model = next(iter(self.backend.model_ids()), self.backend.type)
        try:
            return self.store_as.format(format=format_name, model=model.rsplit("/", 1)[-1])
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"caption: store_as {self.store_as!r} may use only {{format}} and {{model}} ({e})") from None

    def caption_keys(self) -> list[str]:
        """One caption key per format, in the order of `formats`; two formats sharing one key
        would overwrite each other, so that is a config error."""
        names = [self.caption_key(t.name) for t in self.templates()]
        clash = sorted({k for k in names if names.count(k) > 1})
        if clash:
            raise ConfigError(f"caption: formats {self.formats} all store under {clash} with store_as "
                              f"{self.store_as!r}; put {{format}} in store_as")
        return names

    def io(self, available: frozenset[Key]) -> StageIO:
        # The AltText fills the formats' {alt_text} slot when there is one; without it the prompt
        # still works, so it is not a required read.
        # Images when any format has an image prompt, else videos (a format written for videos
        # only); whether a sample is one or the other is known only when it is read.
        kinds = {kind for t in self.templates() for kind in t.all_kinds}
        media = keys.IMAGE if IMAGE in kinds or not kinds & {VIDEO} else keys.VIDEO
        return StageIO(reads=[media], writes=[keys.caption(k) for k in self.caption_keys()])

    def backend_roles(self) -> dict[str, type]:
        return {"backend": VisionLanguageModel}


@dataclass
class FormatVariant:
    """A format's template for one media kind, with its parsed length target and miss policy."""

    template: PromptTemplate
    target: LengthTarget | None
    policy: MissPolicy
    count: Callable[[str], int] | None = None  # set in setup: loading a tokenizer is heavy


@dataclass
class CaptionFormat:
    """A format: its name and its variant per media kind."""

    name: str
    variants: dict[str, FormatVariant]

    # The variant of the format's top-level template (images, for the built-in formats).
    @property
    def main(self) -> FormatVariant:
        return next(iter(self.variants.values()))

    @property
    def template(self) -> PromptTemplate:
        return self.main.template

    @property
    def target(self) -> LengthTarget | None:
        return self.main.target

    @property
    def policy(self) -> MissPolicy:
        return self.main.policy


@dataclass
class _Job:
    """One (sample, format) caption in flight across retry rounds."""

    sample: Sample
    fmt: CaptionFormat
    variant: FormatVariant
    request: VLMRequest
    texts: list[str] = field(default_factory=list)
    attempts: int = 0
    meta: dict = field(default_factory=dict)


class CaptionStage(Stage):
    config: CaptionStageConfig

    def __init__(self, config: CaptionStageConfig):
        super().__init__(config)
        # Templates are checked when the stage is built, so a bad slot fails before any model loads.
        self.formats = []
        config.caption_keys()  # a store_as that makes formats collide fails here, before any model loads
        for base in config.templates():
            variants = {}
            for kind in base.all_kinds:
                template = base.for_kind(kind)
                target, policy = length_settings(template.options, f"format {template.prompt_id}")
                if config.retries is not None:
                    policy = policy.model_copy(update={"retries": config.retries})
                variants[kind] = FormatVariant(template, target, policy)
            self.formats.append(CaptionFormat(base.name, variants))

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        for fmt in self.formats:
            for variant in fmt.variants.values():
                variant.count = counter_for(variant.target) if variant.target is not None else None
        self.backend = self.load_backend(self.config.backend, VisionLanguageModel, "the caption stage")

    def key_for(self, fmt: CaptionFormat) -> str:
        return self.config.caption_key(fmt.name)

    def process(self, batch: list[Sample]) -> list[Sample]:
        cfg = self.config
        jobs: list[_Job] = []
        for sample in batch:
            kind = sample.media.kind
            media = self._media(sample)
            if media is None:
                continue
            images, video = media
            alt = delimited(sample.alt_text, cfg.alt_text_max_chars)
            without = []
            for fmt in self.formats:
                variant = fmt.variants.get(kind)
                if variant is None:
                    without.append(fmt.name)
                    continue
                slots = {"alt_text": alt, "word_count": variant.target.max if variant.target else 50}
                if video is not None:
                    slots.update(seconds=f"{video.seconds:.0f}", frames=len(video.frames))
                jobs.append(_Job(sample, fmt, variant, VLMRequest(
                    prompt=variant.template.render(**slots),
                    images=images,  # the same objects for every format of this sample
                    n=cfg.n,
                    system=variant.template.render_system(**slots),
                    params=cfg.params,
                    tag=f"{sample.key}:{fmt.name}",
                    video=video,
                )))
            if len(without) == len(self.formats):
                sample.fail(STAGE_ERROR, f"none of the formats {', '.join(without)} has a prompt for {kind} samples "
                                         f"(a format YAML gives one in its `media.{kind}` block)")
            elif without:
                sample.meta["formats_without_prompt"] = without
        if not jobs:
            return batch
        # Format-major order: a backend chunking the list gets prompts of one template together,
        # so padding within a chunk stays small.
        jobs.sort(key=lambda j: (self.formats.index(j.fmt), j.sample.media.kind))
        self._generate(jobs)
        retry_round = 0
        while True:
            retry_round += 1
            pending = [j for j in jobs if j.texts and self._too_long(j) and j.variant.policy.retries >= retry_round]
            if not pending:
                break
            self._generate([self._firmer(j) for j in pending], retry=True)
        for job in jobs:
            self._store(job)
        return batch

    @staticmethod
    def _media(sample: Sample):
        """(images, video) a request for `sample` carries, or None after failing the sample."""
        from capmill.media.video import video_input

        kind = sample.media.kind
        if kind == IMAGE:
            if sample.image.image is None:
                sample.fail(DECODE_ERROR, "caption needs a decoded image (image.decode is off or decoding failed)")
                return None
            return [sample.image.image], None
        if kind == VIDEO:
            if not sample.media.frames:
                sample.fail(DECODE_ERROR, "caption needs the video's sampled frames (video.decode is off or decoding failed)")
                return None
            return [], video_input(sample)
        sample.fail(STAGE_ERROR, f"caption cannot read {kind} samples yet")
        return None

    def _generate(self, jobs: list[_Job], retry: bool = False) -> None:
        generations = self.backend.generate([j.request for j in jobs])
        for job, gen in zip(jobs, generations, strict=True):
            job.attempts += 1
            texts = [t.strip() for t in gen.texts]
            if gen.error is not None or not texts or not texts[0]:
                if retry:  # a failed retry keeps the earlier answer, which will be trimmed
                    job.meta["retry_error"] = gen.error or "empty caption"
                    continue
                job.sample.fail(BACKEND_ERROR, f"{job.fmt.name}: {gen.error or 'empty caption'}")
                job.texts = []
                continue
            job.texts = texts
            job.meta.update(gen.meta)

    @staticmethod
    def _too_long(job: _Job) -> bool:
        fmt = job.variant
        return fmt.target is not None and fmt.count(job.texts[0]) > fmt.target.max

    @staticmethod
    def _firmer(job: _Job) -> _Job:
        fmt = job.variant
        instruction = fmt.policy.firmer.format(limit=fmt.target.max, unit=fmt.target.unit)
        base = job.request
        job.request = VLMRequest(prompt=f"{base.prompt}\n\n{instruction}", images=base.images, n=base.n,
                                 system=base.system, params=base.params, tag=f"{base.tag}#retry{job.attempts}",
                                 video=base.video)
        return job

    def _store(self, job: _Job) -> None:
        if not job.texts:
            return
        fmt, text = job.variant, job.texts[0]
        outcome = FIRST_TRY if job.attempts == 1 else REGENERATED
        if self._too_long(job):
            text, outcome = trim(text, fmt.target.max, fmt.count, fmt.policy.trim_at), TRIMMED
            if not text:
                job.sample.fail(BACKEND_ERROR, f"{job.fmt.name}: no word of the caption fits {fmt.target.max} {fmt.target.unit}")
                return
        meta = dict(job.meta)
        if len(job.texts) > 1:
            meta["candidates"] = job.texts[1:]
        meta["length"] = length_meta(text, fmt.target, job.attempts, outcome)
        key = self.key_for(job.fmt)
        job.sample.captions[key] = Caption(text=text, source=key, model=self.backend.model_id,
                                           prompt_id=fmt.template.prompt_id, meta=meta)
