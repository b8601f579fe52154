"""Long captions of long videos by hierarchical aggregation (`type: long_caption`).

LongCaptioning ("LongCaptioning: Unlocking the Power of Long Video Caption Generation in Large
Multimodal Models", 2025) finds that video models stop early when asked for long captions, and
builds captions of over 1,000 words bottom up instead:

1. the video is cut into parts of `segment_seconds`; a vision-language model describes each
   part from its own frames (a subset of the sample's sampled frames);
2. a language model merges the descriptions of `group_size` consecutive parts into one, level
   after level, until at most `group_size` remain;
3. it writes the long caption from those, asked for about `words` words.

The final caption's length is enforced as a caption format's is (`capmill.text.length`): over
`max_words` it is regenerated with a firmer instruction up to `retries` times, then trimmed at a
sentence boundary, and `meta["length"]` says which happened. Part descriptions and every level
are kept in the caption's meta. Each level of all samples of a batch is one backend call.
Every text (descriptions, merges, the caption) passes the output guards (`capmill.guards`);
rejected ones of a level are asked for again together, and one still rejected drops its sample
with the reason (`on_reject: drop`) or is kept flagged (`on_reject: keep`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from capmill import keys
from capmill.backends.base import ChatRequest, GenerationParams, LanguageModel, VisionLanguageModel, VLMRequest
from capmill.components import BackendSpec, StageConfig
from capmill.guards import DROPPED, FLAGGED, GuardConfig, Guarded, OutputGuard, settle
from capmill.guards.checks import TRUNCATED
from capmill.guards.config import AUTO
from capmill.guards.language import detect
from capmill.keys import Key, StageIO
from capmill.prompts import load_template, untrusted
from capmill.prompts.safety import source_text
from capmill.sample import BACKEND_ERROR, DECODE_ERROR, VIDEO, Caption, Frame, Sample
from capmill.sample import DROPPED as DROPPED_STATUS
from capmill.stages.base import RunContext, Stage
from capmill.stages.differential_caption import guard_input, with_note
from capmill.text.length import FIRST_TRY, REGENERATED, TRIMMED, LengthTarget, MissPolicy, count_words, length_meta, trim
from capmill.verify.steps import chat_request


class LongCaptionConfig(StageConfig):
    type: Literal["long_caption"] = "long_caption"
    # The vision-language model describing each part.
    backend: BackendSpec
    # The language model merging descriptions; None: `backend` (it must chat).
    aggregator: BackendSpec | None = None
    # Length of a part, and how many of the sample's sampled frames describe it at most. Sample
    # enough frames for this (e.g. video.sampling: {mode: fps, fps: 0.5, max_frames: 128}).
    segment_seconds: float = Field(10.0, gt=0)
    frames_per_segment: int = Field(4, ge=1)
    # Descriptions merged per call at each level.
    group_size: int = Field(4, ge=2)
    # Length asked for, and the budget enforced on the final caption (words).
    words: int = Field(1000, ge=10)
    max_words: int = Field(1500, ge=10)
    retries: int = Field(1, ge=0)
    store_as: str = "long_caption"
    segment_template: str = "longcaption_segment"
    merge_template: str = "longcaption_merge"
    final_template: str = "longcaption_final"
    prompt_dirs: list[str] = Field(default_factory=list)
    params: GenerationParams | None = None
    # Decoding of merges and the final caption: long outputs need a large max_new_tokens.
    aggregate_params: GenerationParams | None = Field(default_factory=lambda: GenerationParams(max_new_tokens=2048))
    # Output guards on every description, merge and the caption; a text still rejected after
    # regeneration drops its sample ("drop") or is kept flagged ("keep").
    guards: GuardConfig = Field(default_factory=GuardConfig)
    on_reject: Literal["drop", "keep"] = "drop"

    def build(self) -> LongCaptionStage:
        return LongCaptionStage(self)

    def io(self, available: frozenset[Key]) -> StageIO:
        return StageIO(reads=[keys.VIDEO], writes=[keys.caption(self.store_as)])

    def backend_roles(self) -> dict[str, type]:
        return {"backend": VisionLanguageModel, "aggregator": LanguageModel}


@dataclass
class Part:
    start: float
    end: float
    text: str = ""
    guards: dict | None = None  # the guards' record when this text was regenerated or flagged

    def to_dict(self) -> dict[str, Any]:
        d = {"start": self.start, "end": self.end, "text": self.text}
        if self.guards:
            d["guards"] = self.guards
        return d


@dataclass
class _Video:
    sample: Sample
    parts: list[Part]
    levels: list[list[dict[str, Any]]] = field(default_factory=list)
    failed: bool = False
    flagged: str | None = None  # the first reason a kept (on_reject: keep) text was rejected for


def segments(frames: list[Frame], seconds: float, length: float, per_segment: int) -> list[tuple[float, float, list[Frame]]]:
    """The parts [k·length, (k+1)·length) of a `seconds`-long video that hold sampled frames,
    each with at most `per_segment` of its frames (evenly spread)."""
    import math

    from capmill.media.sampling import thin

    count = max(1, math.ceil(seconds / length - 1e-9))
    out = []
    for k in range(count):
        start = k * length
        end = max(seconds, start) if k == count - 1 else (k + 1) * length
        inside = [f for f in frames if f.t >= start and (f.t < end or k == count - 1)]
        if inside:
            out.append((start, end, thin(inside, per_segment)))
    return out


def groups(parts: list[Part], size: int) -> list[list[Part]]:
    """Consecutive runs of `size` parts (the last may be shorter)."""
    return [parts[i:i + size] for i in range(0, len(parts), size)]


def parts_block(parts: list[Part]) -> str:
    return "\n".join(f"[{p.start:.0f}-{p.end:.0f} s] {untrusted(p.text, 'caption', 6000)}" for p in parts)


class LongCaptionStage(Stage):
    config: LongCaptionConfig

    def __init__(self, config: LongCaptionConfig):
        super().__init__(config)
        dirs = config.prompt_dirs
        self.segment = load_template("video", config.segment_template, dirs).check_slots({"start", "end"})
        self.merge = load_template("video", config.merge_template, dirs).check_slots({"parts", "start", "end"})
        self.final = load_template("video", config.final_template, dirs).check_slots({"parts", "seconds", "words"})
        self.target = LengthTarget(unit="words", max=config.max_words)
        self.policy = MissPolicy(retries=config.retries)
        self.guard = OutputGuard(config.guards, stage="long_caption")
        self.language = detect(self.segment.template) if config.guards.language == AUTO else config.guards.language

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        cfg = self.config
        self.vlm = self.load_backend(cfg.backend, VisionLanguageModel, "long_caption's backend")
        if cfg.aggregator is None:
            from capmill.backends.base import require

            self.llm = require(self.vlm, LanguageModel, "long_caption's aggregator (none set: the backend)")
        else:
            self.llm = self.load_backend(cfg.aggregator, LanguageModel, "long_caption's aggregator")

    def process(self, batch: list[Sample]) -> list[Sample]:
        from capmill.media.video import video_input, window_seconds

        cfg = self.config
        videos, entries = [], []
        for sample in batch:
            if sample.media.kind != VIDEO or not sample.media.frames:
                sample.fail(DECODE_ERROR, "long_caption needs a decoded video (sampled frames)")
                continue
            parts = segments(sample.media.frames, window_seconds(sample), cfg.segment_seconds, cfg.frames_per_segment)
            video = _Video(sample, [Part(a, b) for a, b, _ in parts])
            videos.append(video)
            for part, (start, end, frames) in zip(video.parts, parts, strict=True):
                slots = {"start": f"{start:.0f}", "end": f"{end:.0f}"}
                request = VLMRequest(prompt=self.segment.render(**slots), video=video_input(sample, frames),
                                     system=self.segment.render_system(**slots), params=cfg.params,
                                     tag=f"{sample.key}:part{start:.0f}")
                entries.append((video, part, request, {}))
        if not videos:
            return batch
        self._run(entries, self.vlm.generate, "part description")
        for video in videos:
            if not video.failed:
                video.levels.append([p.to_dict() for p in video.parts])
        while True:
            pending = [v for v in videos if not v.failed and len(v.parts) > cfg.group_size]
            if not pending:
                break
            self._merge_level(pending)
        self._final([v for v in videos if not v.failed])
        return batch

    def _run(self, entries: list[tuple[_Video, Part, Any, dict[str, str]]], call, what: str) -> None:
        """Generate one text per entry (video, part to fill, request, sources) in one call, guard
        them (rejected ones asked again together), and store what passes in its part."""
        if not entries:
            return
        items = []
        for (video, part, request, sources), gen in zip(entries, call([e[2] for e in entries]), strict=True):
            text = gen.texts[0].strip() if gen.ok else ""
            if not text:
                video.failed = True
                video.sample.fail(BACKEND_ERROR, f"long_caption {what}: {gen.error or 'empty text'}")
                continue
            items.append(Guarded(text, guard_input(request, gen, sources, self.language), owner=(video, part, request)))
        failing = {id(i) for i in settle(self.guard, items, lambda again: call(
            [with_note(i.owner[2], self.guard.retry_note(i.verdict, self.language)) for i in again]))}
        for item in items:
            video, part, _ = item.owner
            outcome = None
            if id(item) in failing:
                item.reject()
                if self.config.on_reject == "drop":
                    if not video.failed:
                        video.failed = True
                        video.sample.fail(DROPPED_STATUS, f"guard: long_caption {what}: {item.verdict.reason}")
                        video.sample.meta["guards"] = item.meta(DROPPED)
                    continue
                outcome = FLAGGED
                video.flagged = video.flagged or item.verdict.reason
            part.text, part.guards = item.text, item.meta(outcome)

    def _chat(self, template, slots: dict[str, str], tag: str) -> ChatRequest:
        return chat_request(template, slots, self.config.aggregate_params, tag)

    def _merge_level(self, videos: list[_Video]) -> None:
        entries = []
        for video in videos:
            merged = []
            for group in groups(video.parts, self.config.group_size):
                part = Part(group[0].start, group[-1].end)
                merged.append(part)
                if len(group) == 1:
                    part.text = group[0].text
                    continue
                slots = {"parts": parts_block(group), "start": f"{part.start:.0f}", "end": f"{part.end:.0f}"}
                sources = {"parts": source_text("\n".join(p.text for p in group), 24000)}
                entries.append((video, part, self._chat(self.merge, slots, f"{video.sample.key}:merge{part.start:.0f}"), sources))
            video.parts = merged
        self._run(entries, self.llm.chat, "merge")
        for video in videos:
            if not video.failed:
                video.levels.append([p.to_dict() for p in video.parts])

    def _final(self, videos: list[_Video]) -> None:
        from capmill.media.video import window_seconds

        cfg = self.config
        finals, entries = {}, []
        for video in videos:
            slots = {"parts": parts_block(video.parts), "seconds": f"{window_seconds(video.sample):.0f}",
                     "words": str(cfg.words)}
            finals[id(video)] = Part(0.0, window_seconds(video.sample))
            sources = {"parts": source_text("\n".join(p.text for p in video.parts), 24000)}
            entries.append((video, finals[id(video)], self._chat(self.final, slots, f"{video.sample.key}:long"), sources))
        self._run(entries, self.llm.chat, "final caption")
        done = [(v, finals[id(v)], r) for (v, _, r, _) in entries if not v.failed and finals[id(v)].text]
        attempts = {id(v): 1 for v, _, _ in done}
        for retry in range(1, cfg.retries + 1):
            over = [(v, part, r) for v, part, r in done if count_words(part.text) > cfg.max_words]
            if not over:
                break
            firmer = self.policy.firmer.format(limit=cfg.max_words, unit="words")
            gens = self.llm.chat([with_note(r, firmer) for _, _, r in over])
            for (video, part, request), gen in zip(over, gens, strict=True):
                attempts[id(video)] = retry + 1
                answer = gen.texts[0].strip() if gen.ok and gen.texts else ""
                if not answer:
                    continue
                sources = {"parts": source_text("\n".join(p.text for p in video.parts), 24000)}
                skip = frozenset({TRUNCATED}) if count_words(answer) > cfg.max_words else frozenset()
                verdict = self.guard.review(answer, guard_input(request, gen, sources, self.language), skip)
                if verdict.ok:  # an answer the guards reject keeps the earlier one (then trimmed)
                    part.text = answer
        for video, part, _ in done:
            text, tries = part.text, attempts[id(video)]
            outcome = FIRST_TRY if tries == 1 else REGENERATED
            if count_words(text) > cfg.max_words:
                text, outcome = trim(text, cfg.max_words, count_words, "sentence"), TRIMMED
            meta = {"length": length_meta(text, self.target, tries, outcome), "levels": video.levels,
                    "part_model": self.vlm.model_id, "segment_seconds": cfg.segment_seconds}
            if part.guards:
                meta["guards"] = part.guards
            if video.flagged:
                meta["flagged"] = video.flagged
            key = cfg.store_as
            video.sample.captions[key] = Caption(text=text, source=key, model=self.llm.model_id,
                                                 prompt_id=self.final.prompt_id, meta=meta)
