"""Differential sliding-window captioning of videos (`type: differential_caption`).

ShareGPT4Video (Chen et al., "ShareGPT4Video: Improving Video Understanding and Generation with
Better Captions", NeurIPS 2024 Datasets and Benchmarks) captions a video in three moves:

1. keyframes: the sampled frames with the redundant ones dropped (a frame is kept when it
   differs enough from the last kept one; `capmill.media.keyframes`);
2. a detailed caption of the first keyframe, then for each pair of consecutive keyframes a
   description of what changed between them, given the text written so far (the sliding
   window: each step sees two frames and the previous description, so cost grows linearly
   with the video, not quadratically);
3. a language model summarises the timestamped notes into one caption with timestamps.

Every step of every sample in a batch goes to the backend as one call per round: round r asks
for step r of all samples that have that many keyframes. The notes are stored with the caption
(`meta["steps"]`), so the summary can be rewritten later without looking at the video again.
Earlier notes reach later prompts as untrusted model text, cleaned and delimited. Every note and
every summary passes the output guards (`capmill.guards`); rejected ones of a round are asked
for again together, and one still rejected drops its sample with the reason (`on_reject: drop`,
the default: a later step would build on it) or is kept flagged (`on_reject: keep`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import Field

from capmill import keys
from capmill.backends.base import ChatRequest, GenerationParams, ImageTextScorer, LanguageModel, VisionLanguageModel, VLMRequest
from capmill.components import BackendSpec, StageConfig, Strict
from capmill.guards import DROPPED, FLAGGED, GuardConfig, Guarded, GuardInput, OutputGuard, finish_reason, settle
from capmill.guards.config import AUTO
from capmill.guards.language import detect
from capmill.keys import Key, StageIO
from capmill.prompts import load_template, untrusted
from capmill.prompts.safety import source_text, without_untrusted
from capmill.sample import BACKEND_ERROR, DECODE_ERROR, VIDEO, Caption, Frame, Sample
from capmill.sample import DROPPED as DROPPED_STATUS
from capmill.stages.base import RunContext, Stage


class KeyframeConfig(Strict):
    # A frame at least this similar (cosine) to the last keyframe is redundant. Pixel vectors
    # of a still shot sit near 1, large motion brings them to about 0.8, a cut near 0; CLIP
    # image embeddings of one shot stay above about 0.85.
    threshold: float = Field(0.85, ge=-1, le=1)
    # Keyframes per video at most (each costs one step) and at least.
    max_keyframes: int = Field(12, ge=1)
    min_keyframes: int = Field(2, ge=1)


class DifferentialCaptionConfig(StageConfig):
    type: Literal["differential_caption"] = "differential_caption"
    # The vision-language model of the keyframe steps.
    backend: BackendSpec
    # The language model of the summary; None: `backend` (it must chat).
    summarizer: BackendSpec | None = None
    # Image-text scorer whose image embeddings compare frames for the keyframe rule (e.g. CLIP);
    # None compares the frames' pixels (16×16 RGB), which catches cuts and large changes.
    keyframe_scorer: BackendSpec | None = None
    keyframes: KeyframeConfig = Field(default_factory=KeyframeConfig)
    store_as: str = "sharegpt4video"
    first_template: str = "sharegpt4video_first"
    diff_template: str = "sharegpt4video_diff"
    summary_template: str = "sharegpt4video_summary"
    prompt_dirs: list[str] = Field(default_factory=list)
    # Characters of the previous description carried into each step.
    previous_max_chars: int = Field(1500, ge=100)
    params: GenerationParams | None = None
    summary_params: GenerationParams | None = None
    # Output guards on every note and on the summary; `language: auto` expects the language the
    # prompts are written in.
    guards: GuardConfig = Field(default_factory=GuardConfig)
    # A text the guards still reject after regeneration: "drop" its sample (the default), or
    # "keep" it flagged (`meta["flagged"]`).
    on_reject: Literal["drop", "keep"] = "drop"

    def build(self) -> DifferentialCaptionStage:
        return DifferentialCaptionStage(self)

    def io(self, available: frozenset[Key]) -> StageIO:
        return StageIO(reads=[keys.VIDEO], writes=[keys.caption(self.store_as)])

    def backend_roles(self) -> dict[str, type]:
        return {"backend": VisionLanguageModel, "summarizer": LanguageModel, "keyframe_scorer": ImageTextScorer}


@dataclass
class _Video:
    sample: Sample
    keyframes: list[Frame]
    notes: list[str] = field(default_factory=list)
    guards: list[dict | None] = field(default_factory=list)
    failed: bool = False


def notes_block(times: list[float], notes: list[str], max_chars: int = 2000) -> str:
    """The summary prompt's notes: one line per keyframe, its time and its delimited note."""
    return "\n".join(f"[{t:.1f} s] {untrusted(n, 'caption', max_chars)}" for t, n in zip(times, notes, strict=True))


def with_note(request: VLMRequest | ChatRequest, note: str) -> VLMRequest | ChatRequest:
    """`request` asked again with a guard's note added to its prompt."""
    if isinstance(request, VLMRequest):
        return replace(request, prompt=f"{request.prompt}\n\n{note}", tag=f"{request.tag}#guard")
    last = request.messages[-1]
    messages = [*request.messages[:-1], {**last, "content": f"{last['content']}\n\n{note}"}]
    return ChatRequest(messages=messages, n=request.n, params=request.params, tag=f"{request.tag}#guard")


def guard_input(request: VLMRequest | ChatRequest, gen, sources: dict[str, str], language: str | None) -> GuardInput:
    """What a generated text is checked against: the untrusted texts it was given, the
    instructions capmill wrote (which it must not echo), how the backend stopped."""
    if isinstance(request, VLMRequest):
        prompt = f"{request.system or ''}\n{request.prompt}"
    else:
        prompt = "\n".join(m["content"] for m in request.messages)
    return GuardInput(sources=sources, prompt=without_untrusted(prompt), finish=finish_reason(gen.meta), language=language)


class DifferentialCaptionStage(Stage):
    config: DifferentialCaptionConfig

    def __init__(self, config: DifferentialCaptionConfig):
        super().__init__(config)
        dirs = config.prompt_dirs
        self.first = load_template("video", config.first_template, dirs).check_slots({"time"})
        self.diff = load_template("video", config.diff_template, dirs).check_slots({"time", "previous_time", "previous"})
        self.summary = load_template("video", config.summary_template, dirs).check_slots({"notes", "seconds"})
        self.guard = OutputGuard(config.guards, stage="differential_caption")
        language = config.guards.language
        self.language = detect(self.first.template) if language == AUTO else language

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        cfg = self.config
        self.vlm = self.load_backend(cfg.backend, VisionLanguageModel, "differential_caption's backend")
        if cfg.summarizer is None:
            from capmill.backends.base import require

            self.llm = require(self.vlm, LanguageModel, "differential_caption's summarizer (none set: the backend)")
        else:
            self.llm = self.load_backend(cfg.summarizer, LanguageModel, "differential_caption's summarizer")
        scorer = cfg.keyframe_scorer
        self.scorer = self.load_backend(scorer, ImageTextScorer, "differential_caption's keyframe scorer") if scorer else None

    def _keyframes(self, sample: Sample) -> list[Frame]:
        from capmill.media.keyframes import pixel_features, select_keyframes

        frames = sample.media.frames or []
        images = [f.image for f in frames]
        features = self.scorer.embed_images(images) if self.scorer is not None else pixel_features(images)
        k = self.config.keyframes
        return [frames[i] for i in select_keyframes(features, k.threshold, k.max_keyframes, k.min_keyframes)]

    def process(self, batch: list[Sample]) -> list[Sample]:
        videos = []
        for sample in batch:
            if sample.media.kind != VIDEO or not sample.media.frames:
                sample.fail(DECODE_ERROR, "differential_caption needs a decoded video (sampled frames)")
                continue
            videos.append(_Video(sample, self._keyframes(sample)))
        if not videos:
            return batch
        rounds = max(len(v.keyframes) for v in videos)
        for step in range(rounds):
            live = [v for v in videos if not v.failed and step < len(v.keyframes)]
            requests = [self._step_request(v, step) for v in live]
            items = []
            for video, request, gen in zip(live, requests, self.vlm.generate(requests), strict=True):
                text = gen.texts[0].strip() if gen.ok else ""
                if not text:
                    video.failed = True
                    video.sample.fail(BACKEND_ERROR, f"differential_caption step {step}: {gen.error or 'empty description'}")
                    continue
                sources = {"previous": source_text(video.notes[-1], self.config.previous_max_chars)} if video.notes else {}
                items.append(Guarded(text, guard_input(request, gen, sources, self.language), owner=(video, request)))
            for item, outcome in self._settle(items, self.vlm.generate, f"step {step}"):
                video = item.owner[0]
                video.notes.append(item.text)
                video.guards.append(item.meta(outcome))
        live = [v for v in videos if not v.failed]
        if live:
            self._summarise(live)
        return batch

    def _step_request(self, video: _Video, step: int) -> VLMRequest:
        frames, key = video.keyframes, video.sample.key
        if step == 0:
            prompt = self.first.render(time=f"{frames[0].t:.1f}")
            return VLMRequest(prompt=prompt, images=[frames[0].image], params=self.config.params, tag=f"{key}:diffsw0",
                              system=self.first.render_system(time=f"{frames[0].t:.1f}"))
        slots = {"time": f"{frames[step].t:.1f}", "previous_time": f"{frames[step - 1].t:.1f}",
                 "previous": untrusted(video.notes[-1], "caption", self.config.previous_max_chars)}
        return VLMRequest(prompt=self.diff.render(**slots), images=[frames[step - 1].image, frames[step].image],
                          system=self.diff.render_system(**slots), params=self.config.params, tag=f"{key}:diffsw{step}")

    def _settle(self, items: list[Guarded], call, what: str) -> list[tuple[Guarded, str | None]]:
        """Guard `items` (owner: (video, request)), regenerating the rejected ones together with
        `call`; returns the (item, outcome) kept, after dropping or flagging what still fails."""
        failing = {id(i) for i in settle(self.guard, items, lambda again: call(
            [with_note(i.owner[1], self.guard.retry_note(i.verdict, self.language)) for i in again]))}
        kept = []
        for item in items:
            video = item.owner[0]
            if id(item) not in failing:
                kept.append((item, None))
                continue
            item.reject()
            if self.config.on_reject == "keep":
                kept.append((item, FLAGGED))
                continue
            video.failed = True
            video.sample.fail(DROPPED_STATUS, f"guard: differential_caption {what}: {item.verdict.reason}")
            video.sample.meta["guards"] = item.meta(DROPPED)
        return kept

    def _summarise(self, videos: list[_Video]) -> None:
        from capmill.media.video import window_seconds

        requests = []
        for video in videos:
            slots = {"notes": notes_block([f.t for f in video.keyframes], video.notes),
                     "seconds": f"{window_seconds(video.sample):.0f}"}
            messages: list[dict[str, Any]] = []
            system = self.summary.render_system(**slots)
            if system:
                messages.append({"role": "system", "content": system})
            messages.append({"role": "user", "content": self.summary.render(**slots)})
            requests.append(ChatRequest(messages=messages, params=self.config.summary_params,
                                        tag=f"{video.sample.key}:diffsw_summary"))
        items = []
        for video, request, gen in zip(videos, requests, self.llm.chat(requests), strict=True):
            text = gen.texts[0].strip() if gen.ok else ""
            if not text:
                video.sample.fail(BACKEND_ERROR, f"differential_caption summary: {gen.error or 'empty caption'}")
                continue
            sources = {"notes": source_text("\n".join(video.notes), 8000)}
            items.append(Guarded(text, guard_input(request, gen, sources, self.language), owner=(video, request)))
        for item, outcome in self._settle(items, self.llm.chat, "summary"):
            video = item.owner[0]
            key = self.config.store_as
            steps = []
            for f, n, g in zip(video.keyframes, video.notes, video.guards, strict=True):
                steps.append({"t": round(f.t, 3), "text": n, **({"guards": g} if g else {})})
            meta = {"steps": steps, "step_model": self.vlm.model_id,
                    "step_prompts": [self.first.prompt_id, self.diff.prompt_id]}
            if item.meta(outcome):
                meta["guards"] = item.meta(outcome)
            if outcome == FLAGGED or any(g and g.get("outcome") == FLAGGED for g in video.guards):
                meta["flagged"] = item.verdict.reason or next(g["rejected"][-1]["reasons"][0] for g in video.guards
                                                              if g and g.get("outcome") == FLAGGED)
            video.sample.captions[key] = Caption(text=item.text, source=key, model=self.llm.model_id,
                                                 prompt_id=self.summary.prompt_id, meta=meta)
