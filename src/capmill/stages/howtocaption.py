"""Captions from narration, aligned to the video (`type: howtocaption`).

HowToCaption (Shvetsova et al., "HowToCaption: Prompting LLMs to Transform Video Annotations at
Scale", ECCV 2024) turns the speech of instructional videos into captions in three steps:

1. the transcript (the `asr` stage's, with timestamps) is cut into blocks of about 200 words,
   each line prefixed with its time;
2. a language model rewrites each block into short captions of what is visible, each prefixed
   with a time taken from the block (parsed by `capmill.text.timed.parse_timed_lines`);
3. each caption is aligned to the clip that matches it best around its time and kept only if
   that match is good enough (`capmill.metrics.alignment`): frames' image embeddings against the
   caption's text embedding from an image-text scorer (CLIP). Without a scorer the captions keep
   the model's times and nothing is filtered.

The result is stored as one caption (`captions["howtocaption"]`: a line "START-ENDs: caption"
per clip) with the clips in `meta["segments"]` ({start, end, text, score, said_at}), so an export
can emit one training pair per clip. A video with no caption left (no speech, or none aligned
above the threshold) is dropped with the reason. All blocks of a batch go to the model in one
call; all texts and frames of a batch to the scorer in one call each. Every reply passes the
output guards (`capmill.guards`; the narration is its source, so what was said may be echoed);
rejected replies are asked for again together, and the captions of a reply still rejected are
left out (`on_reject: drop`, counted in `meta["guards_dropped"]`) or kept flagged (`keep`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from capmill import keys
from capmill.backends.base import ChatRequest, GenerationParams, ImageTextScorer, LanguageModel
from capmill.components import BackendSpec, StageConfig
from capmill.guards import GuardConfig, Guarded, OutputGuard, settle
from capmill.guards.config import AUTO
from capmill.guards.language import detect
from capmill.keys import Key, StageIO
from capmill.prompts import load_template, untrusted
from capmill.prompts.safety import source_text
from capmill.sample import BACKEND_ERROR, DROPPED, STAGE_ERROR, VIDEO, Caption, Sample
from capmill.stages.base import RunContext, Stage
from capmill.text.timed import Block, TimedText, format_seconds, parse_timed_lines, word_blocks


class HowToCaptionConfig(StageConfig):
    type: Literal["howtocaption"] = "howtocaption"
    # The language model that rewrites narration into captions.
    llm: BackendSpec
    # Image-text scorer for alignment and filtering (e.g. CLIP); None keeps the model's times.
    scorer: BackendSpec | None = None
    # The caption holding the transcript and its segments (the asr stage's store_as).
    transcript: str = "transcript"
    # Words of narration per request (the paper's blocks are 200 words).
    block_words: int = Field(200, ge=1)
    template: str = "howtocaption_rewrite"
    prompt_dirs: list[str] = Field(default_factory=list)
    # Length of the clip each caption is aligned to, and how far from its time it may move
    # (the paper's settings: 8 s clips within ±10 s).
    clip_seconds: float = Field(8.0, gt=0)
    offset_seconds: float = Field(10.0, ge=0)
    # Keep a caption when its best clip's similarity is at least this (scorer cosine); None
    # keeps all. The paper keeps the pairs above a similarity quantile of its whole dataset;
    # a fixed threshold does the same job per sample without a pass over everything first.
    threshold: float | None = None
    store_as: str = "howtocaption"
    params: GenerationParams | None = None
    guards: GuardConfig = Field(default_factory=GuardConfig)
    on_reject: Literal["drop", "keep"] = "drop"

    def build(self) -> HowToCaptionStage:
        return HowToCaptionStage(self)

    def io(self, available: frozenset[Key]) -> StageIO:
        # Frames are read for the alignment only, when a scorer is set.
        reads = [keys.caption(self.transcript)] + ([keys.VIDEO] if self.scorer is not None else [])
        return StageIO(reads=reads, writes=[keys.caption(self.store_as)])

    def backend_roles(self) -> dict[str, type]:
        return {"llm": LanguageModel, "scorer": ImageTextScorer}


def transcript_block(block: Block) -> str:
    """A block as the prompt shows it: one line per phrase, its time, its delimited words."""
    return "\n".join(f"{format_seconds(s.start)}: {untrusted(s.text, 'caption', 1000)}" for s in block.segments)


class HowToCaptionStage(Stage):
    config: HowToCaptionConfig

    def __init__(self, config: HowToCaptionConfig):
        super().__init__(config)
        self.template = load_template("video", config.template, config.prompt_dirs).check_slots({"transcript"})
        self.guard = OutputGuard(config.guards, stage="howtocaption")
        self.language = detect(self.template.template) if config.guards.language == AUTO else config.guards.language

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.llm = self.load_backend(self.config.llm, LanguageModel, "howtocaption's llm")
        scorer = self.config.scorer
        self.scorer = self.load_backend(scorer, ImageTextScorer, "howtocaption's scorer") if scorer else None

    def process(self, batch: list[Sample]) -> list[Sample]:
        cfg = self.config
        work: list[tuple[Sample, Block]] = []
        for sample in batch:
            caption = sample.captions.get(cfg.transcript)
            if caption is None:
                if sample.meta.get("asr"):  # the asr stage found no sound
                    sample.status, sample.error = DROPPED, f"howtocaption: no narration ({sample.meta['asr']})"
                else:
                    sample.fail(STAGE_ERROR, f"howtocaption needs the transcript {cfg.transcript!r} "
                                             "(run an asr stage before it)")
                continue
            segments = [TimedText(float(s["start"]), float(s["end"]), str(s["text"]))
                        for s in caption.meta.get("segments") or []]
            blocks = word_blocks(segments, cfg.block_words)
            if not blocks:
                sample.status, sample.error = DROPPED, "howtocaption: no narration (empty transcript)"
                continue
            work.extend((sample, b) for b in blocks)
        if not work:
            return batch
        requests = []
        for sample, block in work:
            slots = {"transcript": transcript_block(block)}
            messages = []
            if self.template.system:
                messages.append({"role": "system", "content": self.template.render_system(**slots)})
            messages.append({"role": "user", "content": self.template.render(**slots)})
            requests.append(ChatRequest(messages=messages, params=cfg.params, tag=f"{sample.key}:htc{block.start:.0f}"))
        from capmill.stages.differential_caption import guard_input, with_note

        failed: set[str] = set()
        items = []
        for (sample, block), request, gen in zip(work, requests, self.llm.chat(requests), strict=True):
            if not gen.ok:
                failed.add(sample.key)
                sample.fail(BACKEND_ERROR, f"howtocaption: {gen.error or 'empty answer'}")
                continue
            # One source per phrase: a phrase that reads as an instruction taints only itself.
            sources = {f"transcript {i}": source_text(seg.text, 1000) for i, seg in enumerate(block.segments)}
            items.append(Guarded(gen.texts[0].strip(), guard_input(request, gen, sources, self.language),
                                 owner=(sample, block, request)))
        failing = {id(i) for i in settle(self.guard, items, lambda again: self.llm.chat(
            [with_note(i.owner[2], self.guard.retry_note(i.verdict, self.language)) for i in again]))}
        found: dict[str, list[TimedText]] = {}
        guarded: dict[str, list[dict]] = {}
        for item in items:
            sample, block, _ = item.owner
            record = item.meta()
            if id(item) in failing:
                item.reject()
                record = item.meta("dropped" if cfg.on_reject == "drop" else "flagged")
                guarded.setdefault(sample.key, []).append(record)
                if cfg.on_reject == "drop":
                    continue
            elif record:
                guarded.setdefault(sample.key, []).append(record)
            found.setdefault(sample.key, []).extend(parse_timed_lines(item.text, block.start, block.end))
        samples = {s.key: s for s, _ in work if s.key not in failed}
        self._align_and_store(samples, found, guarded)
        return batch

    def _align_and_store(self, samples: dict[str, Sample], found: dict[str, list[TimedText]],
                         guarded: dict[str, list[dict]]) -> None:
        from capmill.media.video import window_seconds

        cfg = self.config
        scored = self._scores(samples, found) if self.scorer is not None else {}
        for key, sample in samples.items():
            captions = found.get(key, [])
            duration = window_seconds(sample)
            kept, dropped = [], 0
            for i, timed in enumerate(captions):
                if key in scored:
                    aligned = scored[key][i]
                    if cfg.threshold is not None and aligned.score < cfg.threshold:
                        dropped += 1
                        continue
                    start, end, score = aligned.start, aligned.end, round(aligned.score, 4)
                else:
                    half = cfg.clip_seconds / 2
                    start, end, score = max(0.0, timed.start - half), min(duration or timed.start + half, timed.start + half), None
                kept.append({"start": round(start, 3), "end": round(end, 3), "text": timed.text, "score": score,
                             "said_at": round(timed.start, 3)})
            records = guarded.get(key, [])
            if not kept:
                why = "no caption in the model's answers" if not captions else \
                    f"no caption aligned at or above the threshold {cfg.threshold}"
                if not captions and any(r.get("outcome") == "dropped" for r in records):
                    why = f"guard: every answer rejected ({records[0]['rejected'][-1]['reasons'][0]})"
                    sample.meta["guards"] = records
                sample.status, sample.error = DROPPED, f"howtocaption: {why}"
                continue
            text = "\n".join(f"{s['start']:.1f}-{s['end']:.1f}s: {s['text']}" for s in kept)
            meta = {"segments": kept, "dropped": dropped, "llm": self.llm.model_id}
            if records:
                meta["guards"] = records
                meta["guards_dropped"] = sum(r.get("outcome") == "dropped" for r in records)
                if any(r.get("outcome") == "flagged" for r in records):
                    meta["flagged"] = next(r["rejected"][-1]["reasons"][0] for r in records if r.get("outcome") == "flagged")
            if self.scorer is not None:
                meta["scorer"] = self.scorer.model_id
            sample.captions[cfg.store_as] = Caption(text=text, source=cfg.store_as, model=self.llm.model_id,
                                                    prompt_id=self.template.prompt_id, meta=meta)

    def _scores(self, samples: dict[str, Sample], found: dict[str, list[TimedText]]) -> dict:
        """key → the alignment of each caption (one scorer call for all texts, one for all frames)."""
        import numpy as np

        from capmill.media.video import window_seconds
        from capmill.metrics.alignment import align

        cfg = self.config
        usable = [k for k, s in samples.items() if found.get(k) and s.media.kind == VIDEO and s.media.frames]
        if not usable:
            return {}
        texts = [t.text for k in usable for t in found[k]]
        images = [f.image for k in usable for f in samples[k].media.frames]
        text_embs = np.asarray(self.scorer.embed_texts(texts))
        frame_embs = np.asarray(self.scorer.embed_images(images))
        out, ti, fi = {}, 0, 0
        for key in usable:
            sample, captions = samples[key], found[key]
            frames = sample.media.frames
            out[key] = align([c.start for c in captions], text_embs[ti:ti + len(captions)], [f.t for f in frames],
                             frame_embs[fi:fi + len(frames)], window_seconds(sample), cfg.clip_seconds, cfg.offset_seconds)
            ti += len(captions)
            fi += len(frames)
        return out
