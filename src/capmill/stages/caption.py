"""The caption stage: every requested format for every image, in one backend call per batch.

Formats are data (`prompts/formats/*.yaml`, or a user's own YAML): a template, an optional
length target and a policy for a miss — "Revisit Large-Scale Image-Caption Data in Pre-training
Multimodal Foundation Models" (Apple, ICLR 2025) writes SSC, DSC and DSC+ from one controllable
captioner. All formats of all samples in a batch go to the backend as one request list, each
request carrying the sample's one decoded image object, so a backend can batch across samples
and formats and preprocess each image once. Captions that miss their length target are
regenerated together (one more batched call per retry round) with a firmer instruction, then
trimmed at a sentence boundary; `meta["length"]` records which happened.

Every caption passes the output guards (`capmill.guards`: refusals, loops, injected
instructions, URLs, markup or code in no input, another language, a truncated end) before it is
stored. Rejected captions are asked for again together (`guards.regenerate` rounds, one batched
call each); one still rejected then goes as `on_reject` says: replaced by the AltText when the
AltText can stand in (the default; `meta["fallback"]` names the reason), kept but flagged, or
its sample dropped with the reason. `meta["guards"]` keeps every rejected text with its reasons.

Videos go through the same stage: a format's `media.video` prompt (same format name, prompt id
"NAME@V:video") with the sample's sampled frames and their timestamps as the request's video.
A format with no prompt for a sample's kind is skipped for that sample and named in its
`meta["formats_without_prompt"]`; a sample none of the formats can caption fails with the reason.

Audio likewise: a format's `media.audio` prompt ("NAME@V:audio") with the sample's decoded
waveform as the request's audio, for an audio-language model (`media: audio` says the stage
captions audio only, so `--models` gives it an audio-language model). `metadata` fills extra
template slots from the record (a title, tags, a description), each placed as untrusted text —
AutoCap's metadata-conditioned captions (see the `autocap` recipe).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pydantic import Field

from capmill import keys
from capmill.backends.base import AudioLanguageModel, Generation, GenerationParams, VisionLanguageModel, VLMRequest
from capmill.backends.common import check_guidance
from capmill.components import BackendSpec, StageConfig
from capmill.errors import ConfigError
from capmill.guards import (
    DROPPED,
    FALLBACK,
    FLAGGED,
    GuardConfig,
    Guarded,
    GuardInput,
    OutputGuard,
    finish_reason,
    settle,
)
from capmill.guards.checks import TRUNCATED
from capmill.guards.config import AUTO
from capmill.guards.guard import REJECTED_CHARS
from capmill.guards.language import detect
from capmill.keys import Key, StageIO
from capmill.prompts import PromptTemplate, load_template, untrusted
from capmill.prompts.control import AlignControl, Controller
from capmill.prompts.safety import clean_text, source_text, without_untrusted
from capmill.sample import AUDIO, BACKEND_ERROR, DECODE_ERROR, IMAGE, STAGE_ERROR, TRANSIENT_ERROR, VIDEO, Caption, Sample
from capmill.sample import DROPPED as DROPPED_STATUS
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

FORMAT_SLOTS = {"alt_text", "word_count", "control"}
# Slots a video prompt may use besides those.
VIDEO_SLOTS = {"seconds", "frames"}
# Slots an audio prompt may use besides those.
AUDIO_SLOTS = {"seconds"}
KIND_SLOTS = {VIDEO: VIDEO_SLOTS, AUDIO: AUDIO_SLOTS}


class CaptionStageConfig(StageConfig):
    omit_when_none: ClassVar[frozenset[str]] = frozenset({"name", "control"})

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
    # Output guards; `language: auto` expects the language the format's prompt is written in.
    guards: GuardConfig = Field(default_factory=GuardConfig)
    # A caption the guards still reject after regeneration: "alt_text" replaces it with the
    # AltText (cleaned, cut to the format's length target) when the AltText can stand in — it
    # has words and no instruction, loop, markup or code — and drops the sample otherwise, since
    # it then has no trustworthy text for the format; "keep" stores it flagged
    # (`meta["flagged"]`); "drop" drops the sample. Dropped samples keep the rejected caption
    # and go to `_rejects/` with `output.rejects`.
    on_reject: Literal["alt_text", "keep", "drop"] = "alt_text"
    # NoC alignment-level control (capmill.prompts.control): a control token or a prompt variant
    # by the sample's `align_bin`, or the top bin for every sample. None: off.
    control: AlignControl | None = None
    # The media this stage captions: "any" (every kind its formats have a prompt for), or one
    # kind; samples of another kind then fail with the reason. "audio" makes the backend an
    # audio-language model (what `--models` swaps in, and what the chain check expects decoded).
    media: Literal["any", "image", "video", "audio"] = "any"
    # Extra template slots filled from the record's metadata, slot → field: a field of the
    # record (a jsonl key, a parquet column) or of its KEY.json (`json.title`); a list is joined
    # with commas. Each is placed as untrusted text (<metadata> … </metadata>), empty when the
    # record lacks it. AutoCap's title, tags and description: {title: json.title, ...}.
    metadata: dict[str, str] = Field(default_factory=dict)
    # Characters of each metadata value allowed into a prompt.
    metadata_max_chars: int = Field(500, ge=0)

    def build(self) -> CaptionStage:
        return CaptionStage(self)

    def templates(self) -> list[PromptTemplate]:
        out = []
        clash = sorted(set(self.metadata) & (FORMAT_SLOTS | VIDEO_SLOTS | AUDIO_SLOTS))
        if clash:
            raise ConfigError(f"caption: metadata slots {clash} would replace built-in slots; name them otherwise")
        for name in self.formats:
            template = load_template("formats", name, self.prompt_dirs)
            for kind in template.all_kinds:
                template.for_kind(kind).check_slots(FORMAT_SLOTS | KIND_SLOTS.get(kind, set()) | set(self.metadata))
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
        # still works, so it is not a required read. Images when any format has an image prompt,
        # else videos (formats written for videos only); whether a sample is one or the other is
        # known only when it is read.
        kinds = {kind for t in self.templates() for kind in t.all_kinds}
        if self.media != "any":
            if self.media not in kinds:
                raise ConfigError(f"caption: media {self.media!r}, but none of the formats {self.formats} has a "
                                  f"prompt for {self.media} (a format YAML gives one in its `media.{self.media}` block)")
            media = keys.MEDIA[self.media]
        else:
            media = keys.IMAGE if IMAGE in kinds or not kinds - {IMAGE} else keys.MEDIA[sorted(kinds - {IMAGE})[0]]
        reads = [media]
        if self.control is not None and self.control.level == "own":
            reads.append(keys.score(self.control.score))
        return StageIO(reads=reads, writes=[keys.caption(k) for k in self.caption_keys()])

    def backend_roles(self) -> dict[str, type]:
        return {"backend": AudioLanguageModel if self.media == AUDIO else VisionLanguageModel}


@dataclass
class CaptionFormat:
    """A format's template for one media kind, with its parsed length target and miss policy."""

    template: PromptTemplate
    target: LengthTarget | None
    policy: MissPolicy
    count: Callable[[str], int] | None = None  # set in setup: loading a tokenizer is heavy
    language: str | None = None  # expected language of its captions (None: not checked)

    @property
    def name(self) -> str:
        return self.template.name


@dataclass
class _Job:
    """One (sample, format) caption in flight across retry rounds."""

    sample: Sample
    fmt: CaptionFormat
    request: VLMRequest  # the request as first sent; retries add a note to a copy
    given: GuardInput
    texts: list[str] = field(default_factory=list)
    attempts: int = 0
    meta: dict = field(default_factory=dict)
    guarded: Guarded | None = None


class CaptionStage(Stage):
    config: CaptionStageConfig

    def __init__(self, config: CaptionStageConfig):
        super().__init__(config)
        # Templates are checked when the stage is built, so a bad slot fails before any model loads.
        # One CaptionFormat per (format, media kind); `formats` holds each format's main one (its
        # top-level template), `by_kind` each kind's variants in the order of `formats` (None
        # where a format has no prompt for that kind).
        self.formats = []
        self.by_kind: dict[str, list[CaptionFormat | None]] = {}
        config.caption_keys()  # a store_as that makes formats collide fails here, before any model loads
        bases = config.templates()
        kinds = {kind for base in bases for kind in base.all_kinds}
        for base in bases:
            for kind in sorted(kinds):
                template = base.for_kind(kind)
                self.by_kind.setdefault(kind, []).append(self._variant(template) if template is not None else None)
            self.formats.append(next(v for v in (self.by_kind[k][-1] for k in base.all_kinds) if v is not None))
        self.order = {fmt.name: i for i, fmt in enumerate(self.formats)}
        self.guard = OutputGuard(config.guards, stage="caption")
        self.control = Controller(config.control, config.prompt_dirs) if config.control is not None else None

    def _variant(self, template: PromptTemplate) -> CaptionFormat:
        config = self.config
        target, policy = length_settings(template.options, f"format {template.prompt_id}")
        if config.retries is not None:
            policy = policy.model_copy(update={"retries": config.retries})
        language = config.guards.language
        if language == AUTO:  # the language the format asks in (built-in formats: English)
            language = detect(f"{template.system or ''} {template.template}")
        return CaptionFormat(template, target, policy, language=language)

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        for fmt in (v for variants in self.by_kind.values() for v in variants if v is not None):
            fmt.count = counter_for(fmt.target) if fmt.target is not None else None
        role = AudioLanguageModel if self.config.media == AUDIO else VisionLanguageModel
        self.backend = self.load_backend(self.config.backend, role, "the caption stage")
        check_guidance(self.backend, self.config.params, "caption")

    def key_for(self, fmt: CaptionFormat) -> str:
        return self.config.caption_key(fmt.name)

    def process(self, batch: list[Sample]) -> list[Sample]:
        cfg = self.config
        jobs: list[_Job] = []
        for sample in batch:
            media = self._media(sample)
            if media is None:
                continue
            images, video, audio = media
            kind = sample.media.kind
            alt = untrusted(sample.alt_text, "alt_text", cfg.alt_text_max_chars)
            record = metadata_values(sample, cfg.metadata)
            variants = self.by_kind.get(kind) or [None] * len(self.formats)
            without = [f.name for f, v in zip(self.formats, variants, strict=True) if v is None]
            if len(without) == len(self.formats):
                sample.fail(STAGE_ERROR, f"none of the formats {', '.join(without)} has a prompt for {kind} samples "
                                         f"(a format YAML gives one in its `media.{kind}` block)")
                continue
            if without:
                sample.meta["formats_without_prompt"] = without
            level = self.control.config.bin_for(sample.scores) if self.control is not None else None
            for fmt in (v for v in variants if v is not None):
                slots = {"alt_text": alt, "word_count": fmt.target.max if fmt.target else 50,
                         "control": self.control.text(level[0]) if self.control is not None else ""}
                slots.update({slot: untrusted(value, "metadata", cfg.metadata_max_chars) for slot, value in record.items()})
                if video is not None:
                    slots.update(seconds=f"{video.seconds:.0f}", frames=len(video.frames))
                if audio is not None:
                    slots.update(seconds=f"{audio.seconds:.0f}")
                prompt = fmt.template.render(**slots)
                tag = f"{sample.key}:{fmt.name}"
                if self.control is not None:
                    prompt = self.control.apply(prompt, level[0], "control" in fmt.template.slots())
                    tag += f"@bin{level[0]}"
                request = VLMRequest(
                    prompt=prompt,
                    images=images,  # the same objects for every format of this sample
                    n=cfg.n,
                    system=fmt.template.render_system(**slots),
                    params=cfg.params,
                    tag=tag,
                    video=video,
                    audio=audio,
                )
                # The AltText is an input of this caption only when the format shows it to the model;
                # the guards read it raw (line breaks of fake turns intact) up to a bound that covers
                # what the prompt held.
                used = fmt.template.slots()
                sources = {"alt_text": source_text(sample.alt_text, cfg.alt_text_max_chars)} if "alt_text" in used else {}
                sources.update({slot: source_text(value, cfg.metadata_max_chars) for slot, value in record.items()
                                if slot in used})
                given = GuardInput(sources=sources, prompt=without_untrusted(f"{request.system or ''}\n{request.prompt}"),
                                   language=fmt.language)
                job = _Job(sample, fmt, request, given)
                if self.control is not None:
                    job.meta["control"] = self.control.meta(*level)
                jobs.append(job)
        if not jobs:
            return batch
        # Format-major order: a backend chunking the list gets prompts of one template together,
        # so padding within a chunk stays small.
        jobs.sort(key=lambda j: (self.order[j.fmt.name], j.sample.media.kind))
        self._generate(jobs)
        live = [j for j in jobs if j.texts]
        for job in live:
            job.guarded = Guarded(job.texts[0], job.given, owner=job)
        # Rejected captions of the whole batch go back together, one backend call per round.
        settle(self.guard, [j.guarded for j in live], self._regenerate, skip_for=self._skip_for)
        self._length_rounds([j for j in live if j.guarded.ok])
        for job in live:
            if job.sample.status != TRANSIENT_ERROR:
                self._store(job)
        return batch

    def _media(self, sample: Sample):
        """(images, video, audio) a request for `sample` carries, or None after failing the sample."""
        from capmill.media.audio import audio_input
        from capmill.media.video import video_input

        kind = sample.media.kind
        if self.config.media not in ("any", kind):
            sample.fail(STAGE_ERROR, f"caption (media: {self.config.media}) does not caption {kind} samples")
            return None
        if kind == IMAGE:
            if sample.image.image is None:
                sample.fail(DECODE_ERROR, "caption needs a decoded image (image.decode is off or decoding failed)")
                return None
            return [sample.image.image], None, None
        if kind == VIDEO:
            if not sample.media.frames:
                sample.fail(DECODE_ERROR, "caption needs the video's sampled frames (video.decode is off or decoding failed)")
                return None
            return [], video_input(sample), None
        if kind == AUDIO:
            if sample.media.audio is None:
                sample.fail(DECODE_ERROR, "caption needs the decoded audio (audio.decode is off or decoding failed)")
                return None
            return [], None, audio_input(sample)
        sample.fail(STAGE_ERROR, f"caption cannot read {kind} samples")
        return None

    def _generate(self, jobs: list[_Job]) -> None:
        generations = self.backend.generate([j.request for j in jobs])
        for job, gen in zip(jobs, generations, strict=True):
            job.attempts += 1
            texts = [t.strip() for t in gen.texts]
            if gen.error is not None or not texts or not texts[0]:
                # A transient failure is never stored as a result: the sample is retryable and
                # redone as a whole.
                job.sample.fail(TRANSIENT_ERROR if gen.transient else BACKEND_ERROR,
                                f"{job.fmt.name}: {gen.error or 'empty caption'}")
                job.texts = []
                continue
            job.texts = texts
            job.meta.update(gen.meta)
            job.given.finish = finish_reason(gen.meta)

    def _retry(self, jobs: list[_Job], notes: list[str]) -> list[Generation]:
        """One backend call for every job, each prompt with its note added; successful answers
        become the jobs' candidates."""
        requests = []
        for job, note in zip(jobs, notes, strict=True):
            base = job.request
            requests.append(VLMRequest(prompt=f"{base.prompt}\n\n{note}", images=base.images, n=base.n, system=base.system,
                                       params=base.params, tag=f"{base.tag}#retry{job.attempts}", video=base.video,
                                       audio=base.audio))
        generations = self.backend.generate(requests)
        for job, gen in zip(jobs, generations, strict=True):
            job.attempts += 1
            texts = [t.strip() for t in gen.texts]
            if gen.error is None and texts and texts[0]:
                job.texts = texts
                job.meta.update(gen.meta)
            elif gen.transient:  # not a verdict on the caption: the sample is redone as a whole
                job.sample.fail(TRANSIENT_ERROR, f"{job.fmt.name}: {gen.error}")
            else:  # a failed retry keeps the earlier answer
                job.meta["retry_error"] = gen.error or "empty caption"
        return generations

    def _regenerate(self, items: list[Guarded]) -> list[Generation]:
        jobs = [item.owner for item in items]
        return self._retry(jobs, [self.guard.retry_note(item.verdict, job.fmt.language)
                                  for item, job in zip(items, jobs, strict=True)])

    def _skip_for(self, item: Guarded) -> frozenset[str]:
        # A caption over its length target is cut at a sentence by the length policy, which
        # also ends a truncated one cleanly.
        return frozenset({TRUNCATED}) if self._over(item.owner.fmt, item.text) else frozenset()

    def _length_rounds(self, jobs: list[_Job]) -> None:
        """Captions over their target are asked again with a firmer instruction, together, as
        long as their format allows; an answer the guards reject keeps the earlier caption (it
        is then trimmed)."""
        retry_round = 0
        while True:
            retry_round += 1
            pending = [j for j in jobs if self._over(j.fmt, j.guarded.text) and j.fmt.policy.retries >= retry_round]
            if not pending:
                return
            previous = [(list(j.texts), j.given.finish) for j in pending]
            notes = [j.fmt.policy.firmer.format(limit=j.fmt.target.max, unit=j.fmt.target.unit) for j in pending]
            for job, gen, (texts, finish) in zip(pending, self._retry(pending, notes), previous, strict=True):
                answer = gen.texts[0].strip() if gen.ok and gen.texts and gen.texts[0].strip() else ""
                if not answer:
                    continue
                job.given.finish = finish_reason(gen.meta)
                skip = frozenset({TRUNCATED}) if self._over(job.fmt, answer) else frozenset()
                verdict = self.guard.review(answer, job.given, skip)
                if verdict.ok:
                    job.guarded.text = answer
                else:  # the earlier caption passed: keep it (it is trimmed) and record this one
                    job.guarded.rejected.append({"text": answer[:REJECTED_CHARS], **verdict.to_meta()})
                    job.texts, job.given.finish = texts, finish

    @staticmethod
    def _over(fmt: CaptionFormat, text: str) -> bool:
        return fmt.target is not None and fmt.count(text) > fmt.target.max

    def _fit(self, fmt: CaptionFormat, text: str) -> tuple[str, bool]:
        """`text` within the format's target (trimmed when over), and whether it was trimmed."""
        if self._over(fmt, text):
            return trim(text, fmt.target.max, fmt.count, fmt.policy.trim_at), True
        return text, False

    def _store(self, job: _Job) -> None:
        fmt, guarded, sample = job.fmt, job.guarded, job.sample
        key = self.key_for(fmt)
        meta = dict(job.meta)
        model = self.backend.model_id
        if guarded.ok:
            if len(job.texts) > 1:  # other candidates stay unchecked, as before
                meta["candidates"] = job.texts[1:]
            text, trimmed = self._fit(fmt, guarded.text)
            if not text:
                sample.fail(BACKEND_ERROR, f"{fmt.name}: no word of the caption fits {fmt.target.max} {fmt.target.unit}")
                return
            guards_meta = guarded.meta()
        else:
            text, trimmed, model, guards_meta = self._settle_rejected(job, key, meta)
        outcome = TRIMMED if trimmed else (FIRST_TRY if job.attempts == 1 else REGENERATED)
        meta["length"] = length_meta(text, fmt.target, job.attempts, outcome)
        if guards_meta:
            meta["guards"] = guards_meta
        sample.captions[key] = Caption(text=text, source=key, model=model, prompt_id=fmt.template.prompt_id, meta=meta)

    def _settle_rejected(self, job: _Job, key: str, meta: dict) -> tuple[str, bool, str | None, dict]:
        """A caption still rejected: (text, trimmed, model, guards meta) as `on_reject` says;
        `meta` gets the fallback or flag."""
        fmt, guarded, sample = job.fmt, job.guarded, job.sample
        guarded.reject()
        reason, policy = guarded.verdict.reason, self.config.on_reject
        problem = None
        if policy == "alt_text":
            problem = self.guard.stand_in_problem(source_text(sample.alt_text, self.config.alt_text_max_chars))
            alt, trimmed = self._fit(fmt, clean_text(sample.alt_text or "", self.config.alt_text_max_chars))
            if problem is None and alt:
                meta.update(fallback=reason, rejected=guarded.text[:REJECTED_CHARS])
                return alt, trimmed, None, guarded.meta(FALLBACK)
            problem = problem or "no part of it fits the length target"
        meta["flagged"] = reason
        text, trimmed = self._fit(fmt, guarded.text)
        outcome = FLAGGED
        if policy != "keep":  # drop, or an AltText that cannot stand in
            outcome = DROPPED
            sample.fail(DROPPED_STATUS, f"guard: {key}: {reason}")
        guards_meta = guarded.meta(outcome)
        if problem:
            guards_meta["alt_text_cannot_stand_in"] = problem
        return text or guarded.text, trimmed and bool(text), self.backend.model_id, guards_meta


def metadata_values(sample: Sample, fields: dict[str, str]) -> dict[str, str]:
    """slot → the record's value for each configured metadata field ("" when the record lacks
    it): a top-level field of the record's meta, or a dotted path into it (`json.title`); lists
    are joined with commas, numbers written as they are."""
    out = {}
    for slot, path in fields.items():
        value = record_value(sample.meta, path)
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value if v is not None and not isinstance(v, (dict, list)))
        out[slot] = "" if value is None or isinstance(value, dict) else str(value)
    return out


def record_value(meta: dict, path: str):
    """`meta[path]`, else the dotted `path` walked through nested dicts, else the field of the
    record's KEY.json (`meta["json"]`) of that name; None when none has it."""
    if path in meta:
        return meta[path]
    node = meta
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            node = None
            break
        node = node[part]
    if node is not None:
        return node
    json_meta = meta.get("json")
    return json_meta.get(path) if isinstance(json_meta, dict) else None
