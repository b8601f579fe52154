"""`candidates`: K captions per image (or audio clip) from several models, prompts and decoding settings.

The first step of generate → rank → judge → refine. Bianco et al. ("Improving Image Captioning
Descriptiveness by Ranking and LLM-based Fusion", 2023; no public code) caption each image with
several state-of-the-art captioners; MLBCAP (multi-LLM collaborative captioning of scientific
figures, 2025; no public code) asks several models; SLAM-AAC's CLAP-Refine (X-LANCE/SLAM-LLM
`examples/slam_aac/utils/clap_refine.py`) decodes one model with beam sizes 2 to 8 and keeps the
candidate its contrastive scorer prefers. One stage covers all of them:

    - type: candidates
      captioners: [{type: transformers, model: A}, {type: transformers, model: B}]
      settings:
        - {captioner: 0, format: ssc}                             # greedy, model A
        - {captioner: 1, format: dsc, params: {temperature: 0.7}, n: 2}
        - {captioner: 0, format: ssc, sweep: {num_beams: [2, 3, 4, 5, 6, 7, 8]}}   # SLAM-AAC

`sweep` expands one entry into one setting per value of a decoding parameter (`num_beams`,
`temperature`, `seed`, …). Settings are numbered in config order after expansion; each gives `n`
candidates (sampled, or the n best beams when greedy).

Storage: candidate i of a sample is `captions["STORE_AS.i"]` (`cand.0`, `cand.1`, … in setting
order), an ordinary caption with the model that wrote it, its format's prompt id, and in
`meta["setting"]` the setting that made it (index, backend model, format, decoding parameters,
which of its n). Separate keys rather than a list in one caption's meta, so that every candidate
is scored, evaluated, reported and exported like any caption, its guards are counted per key,
and a later stage names the set by its prefix (`rank`, `judge`: `candidates: cand`).

Cost: every request of the batch goes to each backend in ONE call; the transformers backend
groups requests by decoding setting, so K candidates of a batch cost one model `generate` call
per setting (per `batch_size` chunk), not one per sample or per candidate.

Audio: with `media: audio` the captioners are audio-language models and each setting's format
asks with its audio prompt (`ssc@1:audio`), the sample's decoded waveform as the request's
audio — SLAM-AAC's candidates (the `slam_aac` recipe).

Every candidate passes the output guards; the rejected ones of the batch are asked for again in
one call per backend and round. One still rejected is kept flagged (`meta["flagged"]`, which
`rank` and `judge` skip) or left out (`on_reject: omit`). A candidate over its format's length
target is cut at a sentence (`meta["length"]`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from capmill import keys
from capmill.backends.base import AudioLanguageModel, Generation, GenerationParams, VisionLanguageModel, VLMRequest
from capmill.backends.common import check_guidance
from capmill.components import BackendSpec, StageConfig, Strict
from capmill.errors import ConfigError
from capmill.guards import FLAGGED, GuardConfig, Guarded, GuardInput, OutputGuard, finish_reason, settle
from capmill.guards.checks import TRUNCATED
from capmill.guards.config import AUTO
from capmill.guards.guard import REJECTED_CHARS
from capmill.guards.language import detect
from capmill.keys import Key, StageIO
from capmill.prompts import PromptTemplate, load_template, untrusted
from capmill.prompts.safety import source_text, without_untrusted
from capmill.sample import AUDIO, BACKEND_ERROR, DECODE_ERROR, TRANSIENT_ERROR, Caption, Sample
from capmill.stages.base import RunContext, Stage
from capmill.stages.caption import AUDIO_SLOTS, FORMAT_SLOTS
from capmill.text.length import FIRST_TRY, REGENERATED, TRIMMED, LengthTarget, counter_for, length_meta, length_settings, trim

SWEEPABLE = set(GenerationParams.model_fields)


class CandidateSetting(Strict):
    """One way of writing candidates: a model, a format and decoding settings."""

    # Index into the stage's `captioners`.
    captioner: int = Field(0, ge=0)
    # A caption format (built-in name or YAML path), as the caption stage takes them.
    format: str = "ssc"
    # Decoding settings; None: the backend's configured defaults.
    params: GenerationParams | None = None
    # Candidates from this setting: n samples when sampling, the n best beams when greedy.
    n: int = Field(1, ge=1)
    # One setting per value of a decoding parameter, e.g. {num_beams: [2, 3, 4, 5, 6, 7, 8]}.
    sweep: dict[str, list[Any]] | None = None

    @field_validator("sweep")
    @classmethod
    def _sweepable(cls, v: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        if v is None:
            return v
        unknown = sorted(set(v) - SWEEPABLE)
        if unknown:
            raise ValueError(f"sweep names {unknown}, which are no decoding parameters; sweepable: {sorted(SWEEPABLE)}")
        if len(v) != 1 or not next(iter(v.values())):
            raise ValueError("sweep takes one decoding parameter with a non-empty list of values")
        return v

    def expand(self) -> list[CandidateSetting]:
        """This setting, or one per swept value (each validated as GenerationParams)."""
        if self.sweep is None:
            return [self]
        (name, values), = self.sweep.items()
        base = (self.params or GenerationParams()).model_dump()
        out = []
        for value in values:
            try:
                params = GenerationParams.model_validate({**base, name: value})
            except ValueError as e:
                raise ValueError(f"sweep {name}={value!r}: {e}") from None
            out.append(self.model_copy(update={"params": params, "sweep": None}))
        return out


class CandidatesStageConfig(StageConfig):
    type: Literal["candidates"] = "candidates"
    # The captioners (any VisionLanguageModel backends); settings name them by index.
    captioners: list[BackendSpec] = Field(min_length=1)
    settings: list[CandidateSetting] = Field(default_factory=lambda: [CandidateSetting()], min_length=1)
    prompt_dirs: list[str] = Field(default_factory=list)
    # Candidates are captions["STORE_AS.0"], ["STORE_AS.1"], ...
    store_as: str = Field("cand", pattern=r"^[A-Za-z0-9_\-]+$")
    alt_text_max_chars: int = Field(1000, ge=0)
    guards: GuardConfig = Field(default_factory=GuardConfig)
    # A candidate still rejected after regeneration: "flag" stores it with meta["flagged"] (rank
    # and judge skip it); "omit" leaves its key out of that sample.
    on_reject: Literal["flag", "omit"] = "flag"
    # What the candidates describe: images (vision-language captioners), or audio (audio-language
    # captioners, each format's audio prompt); samples of another kind fail with the reason.
    media: Literal["image", "audio"] = "image"

    @model_validator(mode="after")
    def _settings_name_backends(self) -> CandidatesStageConfig:
        for i, setting in enumerate(self.settings):
            if setting.captioner >= len(self.captioners):
                raise ValueError(f"settings[{i}] names captioner {setting.captioner}, but only {len(self.captioners)} "
                                 f"captioner(s) are configured (indices from 0)")
        return self

    def build(self) -> CandidatesStage:
        return CandidatesStage(self)

    def expanded(self) -> list[CandidateSetting]:
        return [s for setting in self.settings for s in setting.expand()]

    def count(self) -> int:
        """K: the candidates each sample gets."""
        return sum(s.n for s in self.expanded())

    def io(self, available: frozenset[Key]) -> StageIO:
        return StageIO(reads=[keys.MEDIA[self.media]],
                       writes=[keys.caption(f"{self.store_as}.{i}") for i in range(self.count())])

    def backend_roles(self) -> dict[str, type]:
        return {"captioners": AudioLanguageModel if self.media == AUDIO else VisionLanguageModel}


@dataclass
class _Plan:
    """One expanded setting: where its candidates go and how they are asked for."""

    index: int
    first: int  # candidate index of its first candidate
    setting: CandidateSetting
    template: PromptTemplate
    target: LengthTarget | None
    language: str | None
    count: Any = None  # the length counter, set in setup


@dataclass
class _Slot:
    """One candidate of one sample in flight."""

    sample: Sample
    plan: _Plan
    which: int  # 0 … n-1 within its setting
    request: VLMRequest
    given: GuardInput
    meta: dict


class CandidatesStage(Stage):
    config: CandidatesStageConfig

    def __init__(self, config: CandidatesStageConfig):
        super().__init__(config)
        self.plans: list[_Plan] = []
        first = 0
        templates: dict[str, PromptTemplate] = {}
        for index, setting in enumerate(config.expanded()):
            if setting.format not in templates:
                template = load_template("formats", setting.format, config.prompt_dirs).for_kind(config.media)
                if template is None:
                    raise ConfigError(f"candidates: format {setting.format!r} has no prompt for {config.media}")
                templates[setting.format] = template.check_slots(FORMAT_SLOTS | (AUDIO_SLOTS if config.media == AUDIO else set()))
            template = templates[setting.format]
            target, _ = length_settings(template.options, f"format {template.prompt_id}")
            language = config.guards.language
            if language == AUTO:
                language = detect(f"{template.system or ''} {template.template}")
            self.plans.append(_Plan(index, first, setting, template, target, language))
            first += setting.n
        self.guard = OutputGuard(config.guards, stage="candidates")

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        role = AudioLanguageModel if self.config.media == AUDIO else VisionLanguageModel
        self.backends = [self.load_backend(b, role, "the candidates stage") for b in self.config.captioners]
        for plan in self.plans:
            check_guidance(self.backends[plan.setting.captioner], plan.setting.params, "candidates")
            plan.count = counter_for(plan.target) if plan.target is not None else None

    def key(self, plan: _Plan, which: int) -> str:
        return f"{self.config.store_as}.{plan.first + which}"

    def process(self, batch: list[Sample]) -> list[Sample]:
        cfg = self.config
        jobs: list[tuple[Sample, _Plan, VLMRequest, GuardInput]] = []
        for sample in batch:
            media = self._media(sample)
            if media is None:
                continue
            images, audio = media
            alt = untrusted(sample.alt_text, "alt_text", cfg.alt_text_max_chars)
            for plan in self.plans:
                slots = {"alt_text": alt, "word_count": plan.target.max if plan.target else 50}
                if audio is not None:
                    slots["seconds"] = f"{audio.seconds:.0f}"
                request = VLMRequest(prompt=plan.template.render(**slots), images=images, n=plan.setting.n,
                                     system=plan.template.render_system(**slots), params=plan.setting.params,
                                     tag=f"{sample.key}:{cfg.store_as}.{plan.index}", audio=audio)
                shown = "alt_text" in plan.template.slots()
                sources = {"alt_text": source_text(sample.alt_text, cfg.alt_text_max_chars)} if shown else {}
                given = GuardInput(sources=sources, prompt=without_untrusted(f"{request.system or ''}\n{request.prompt}"),
                                   language=plan.language)
                jobs.append((sample, plan, request, given))
        slots = self._generate(jobs)
        items = [Guarded(text, slot.given, owner=slot) for slot, text in slots]
        # The rejected candidates of the whole batch go back together: one call per backend and round.
        failing = settle(self.guard, items, self._regenerate, skip_for=self._skip_for)
        for item in items:
            slot: _Slot = item.owner
            if slot.sample.status != TRANSIENT_ERROR:
                self._store(item, item in failing)
        return batch

    def _media(self, sample: Sample):
        """(images, audio) the requests for `sample` carry, or None after failing the sample."""
        if self.config.media == AUDIO:
            from capmill.media.audio import audio_input

            if sample.media.kind != AUDIO:
                sample.fail(DECODE_ERROR, f"candidates (media: audio) needs audio, not a {sample.media.kind} sample")
                return None
            if sample.media.audio is None:
                sample.fail(DECODE_ERROR, "candidates needs the decoded audio (audio.decode is off or decoding failed)")
                return None
            return [], audio_input(sample)
        if sample.image.image is None:
            sample.fail(DECODE_ERROR, "candidates needs a decoded image (image.decode is off or decoding failed)")
            return None
        return [sample.image.image], None

    def _by_backend(self, requests: list[tuple[int, VLMRequest]]) -> list[Generation]:
        """One generate call per captioner for every request naming it; results in request order."""
        out: list[Generation | None] = [None] * len(requests)
        for b, backend in enumerate(self.backends):
            mine = [i for i, (owner, _) in enumerate(requests) if owner == b]
            if mine:
                for i, gen in zip(mine, backend.generate([requests[i][1] for i in mine]), strict=True):
                    out[i] = gen
        return out  # type: ignore[return-value]

    def _generate(self, jobs: list) -> list[tuple[_Slot, str]]:
        gens = self._by_backend([(plan.setting.captioner, request) for _, plan, request, _ in jobs])
        slots = []
        for (sample, plan, request, given), gen in zip(jobs, gens, strict=True):
            texts = [t.strip() for t in gen.texts]
            if gen.error is not None or len(texts) < plan.setting.n or not all(texts):
                status = TRANSIENT_ERROR if gen.transient else BACKEND_ERROR
                sample.fail(status, f"{self.config.store_as}.{plan.index}: {gen.error or 'empty or missing candidate'}")
                continue
            for which, text in enumerate(texts[:plan.setting.n]):
                slot_given = GuardInput(sources=given.sources, prompt=given.prompt, language=given.language,
                                        finish=finish_reason(gen.meta, which))
                slots.append((_Slot(sample, plan, which, request, slot_given, {"attempts": 1}), text))
        return slots

    def _regenerate(self, items: list[Guarded]) -> list[Generation]:
        requests = []
        for item in items:
            slot: _Slot = item.owner
            base = slot.request
            note = self.guard.retry_note(item.verdict, slot.plan.language)
            requests.append((slot.plan.setting.captioner, VLMRequest(
                prompt=f"{base.prompt}\n\n{note}", images=base.images, n=1, system=base.system, params=base.params,
                tag=f"{base.tag}.{slot.which}#retry{item.regenerated + 1}", audio=base.audio)))
        gens = self._by_backend(requests)
        for item, gen in zip(items, gens, strict=True):
            item.owner.meta["attempts"] += 1
            if not gen.ok and gen.transient:  # not a verdict on the candidate: the sample is redone
                item.owner.sample.fail(TRANSIENT_ERROR, f"{self.key(item.owner.plan, item.owner.which)}: {gen.error}")
        return gens

    def _skip_for(self, item: Guarded) -> frozenset[str]:
        # A candidate over its target is cut at a sentence anyway, which also ends a truncated one.
        plan = item.owner.plan
        return frozenset({TRUNCATED}) if plan.target is not None and plan.count(item.text) > plan.target.max else frozenset()

    def _store(self, item: Guarded, rejected: bool) -> None:
        slot: _Slot = item.owner
        plan, sample = slot.plan, slot.sample
        key = self.key(plan, slot.which)
        if rejected and self.config.on_reject == "omit":
            return
        text, trimmed = item.text, False
        if plan.target is not None and plan.count(text) > plan.target.max:
            text, trimmed = trim(text, plan.target.max, plan.count), True
        backend = self.backends[plan.setting.captioner]
        params = plan.setting.params.model_dump(mode="json") if plan.setting.params is not None else None
        meta: dict[str, Any] = {
            "setting": {"index": plan.index, "backend": backend.model_id, "format": plan.template.name,
                        "params": params, "n": plan.setting.n, "sample": slot.which},
            "length": length_meta(text, plan.target, slot.meta["attempts"],
                                  TRIMMED if trimmed else (FIRST_TRY if slot.meta["attempts"] == 1 else REGENERATED)),
        }
        if rejected:
            item.reject()
            meta["flagged"] = item.verdict.reason
            meta["rejected"] = item.text[:REJECTED_CHARS]
            guards = item.meta(FLAGGED)
        else:
            guards = item.meta()
        if guards:
            meta["guards"] = guards
        sample.captions[key] = Caption(text=text or item.text, source=key, model=backend.model_id,
                                       prompt_id=plan.template.prompt_id, meta=meta)

