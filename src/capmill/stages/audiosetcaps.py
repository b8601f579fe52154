"""AudioSetCaps captions: an audio-language model answers questions, a language model writes the
caption from the answers, and CLAP checks it (`type: audiosetcaps`).

AudioSetCaps (Bai, Liu et al., "AudioSetCaps: An Enriched Audio-Caption Dataset using Automated
Generation Pipeline with Large Audio and Language Models", NeurIPS 2024 Audio Imagination
workshop; reference code AudioSetCaps/AudioSetCaps `pipeline/`) captioned 6 million clips so:

1. the audio-language model (Qwen-Audio-Chat) answers questions about the clip: its sounds,
   its speech (speaker, emotion, language) and its music (genre, instruments); the answers are
   asked for again (2 tries) when together they are shorter than 100 or longer than 500
   characters; an answer saying the speech or music is absent ("no speech", "does not", "is
   not") is left out;
2. a language model (Mistral 7B) writes a caption of at most 50 words from the answers and the
   clip's AudioSet labels, told never to repeat what is said and never to list the labels;
3. LAION-CLAP scores the caption against the audio, and the labels too (punctuation removed,
   the labels repeated to the caption's length); the caption is accepted when it scores at
   least as well as the labels, else it is written again (2 tries in all), keeping the best.

capmill asks the questions of all the batch's clips in one backend call (each question on its
own, with the audio, rather than as one conversation: a request carries one turn; the answers
do not depend on one another's wording), adds an acoustic-scene question (leave it out of
`questions` to follow the reference), has the caption written for the whole batch in one call,
and embeds the batch's audio and captions in one scorer call each. Repeated answers are asked
with a note on their length rather than resampled, so they stay reproducible; repeated captions
are sampled at `retry_temperature` with a seed per try. `check: threshold` accepts a caption
whose CLAP cosine reaches `threshold` instead of comparing with the labels; `check: none` (or
no scorer) keeps the first caption the output guards pass.

Stored: `captions[STORE_AS]` with the answers (`meta["qa"]`: aspect, question, answer, kept),
the tries, the CLAP score and the labels' score, whether the check accepted it, and the models;
`scores[STORE_AS]` is the caption's CLAP cosine. A caption the guards still reject is dropped
with its sample (`on_reject: drop`) or kept flagged (`keep`).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator

from capmill import keys
from capmill.backends.base import (
    AudioLanguageModel,
    AudioTextScorer,
    ChatRequest,
    GenerationParams,
    LanguageModel,
    VLMRequest,
)
from capmill.components import BackendSpec, StageConfig
from capmill.guards import GuardConfig, Guarded, OutputGuard, settle
from capmill.guards.config import AUTO
from capmill.guards.language import detect
from capmill.keys import Key, StageIO
from capmill.prompts import load_template, untrusted
from capmill.prompts.safety import source_text
from capmill.sample import (
    AUDIO,
    BACKEND_ERROR,
    DECODE_ERROR,
    DROPPED,
    STAGE_ERROR,
    TRANSIENT_ERROR,
    Caption,
    Sample,
)
from capmill.stages.base import RunContext, Stage

QUESTIONS = ("audiosetcaps_sounds", "audiosetcaps_speech", "audiosetcaps_music", "audiosetcaps_scene")
# The reference drops a speech (music) answer containing "no speech" ("no music"), "does not" or
# "is not"; the last two marker phrases cover the scene question's "no scene" and plain negations.
ABSENT = ("no speech", "no music", "no scene", "does not", "is not", "there is no", "there are no")
LENGTH_NOTES = {"short": "Answer in more detail.", "long": "Answer more briefly."}


class AudioSetCapsConfig(StageConfig):
    type: Literal["audiosetcaps"] = "audiosetcaps"
    # The audio-language model that answers the questions (e.g. Qwen/Qwen2-Audio-7B-Instruct).
    backend: BackendSpec
    # The language model that writes the caption from the answers.
    llm: BackendSpec
    # CLAP (or any AudioTextScorer) for the check; None: no check.
    scorer: BackendSpec | None = None
    # Question templates (prompts/audio/ or your own YAML), the first about the sounds; each
    # names its `aspect` in its options.
    questions: list[str] = Field(default_factory=lambda: list(QUESTIONS), min_length=1)
    template: str = "audiosetcaps_caption"
    prompt_dirs: list[str] = Field(default_factory=list)
    # An answer (after the first) containing one of these, in any case, says its aspect is absent
    # and is left out of the caption's inputs.
    absent: list[str] = Field(default_factory=lambda: list(ABSENT))
    # Characters of all answers together; outside [min, max] they are asked for again. None: no check.
    answer_chars: tuple[int, int] | None = (100, 500)
    # Rounds of answers at most (the first included).
    answer_tries: int = Field(2, ge=1)
    # The clip's labels: "alt_text", or a field of the record (`json.labels`; a list is joined).
    # None: no labels (the check then needs `check: threshold`).
    labels: str | None = "alt_text"
    labels_max_chars: int = Field(500, ge=0)
    # "labels": accept a caption scoring at least the labels' score (the reference's rule);
    # "threshold": accept a CLAP cosine of at least `threshold`; "none": no check.
    check: Literal["labels", "threshold", "none"] = "labels"
    threshold: float = 0.0
    # Pad the labels by repeating them to the caption's length, punctuation removed from both,
    # before scoring (the reference's rule: CLAP's text tower favours longer texts otherwise).
    pad_labels: bool = True
    # Captions written at most (the first included); the best-scoring one is kept.
    caption_tries: int = Field(2, ge=1)
    # Sampling temperature of the captions written again after a failed check (seeded per try).
    retry_temperature: float = Field(0.7, ge=0)
    words: int = Field(50, ge=1)
    # Decoding of the answers (backend) and of the caption (llm); None: the backends' defaults.
    params: GenerationParams | None = None
    llm_params: GenerationParams | None = None
    store_as: str = "audiosetcaps"
    guards: GuardConfig = Field(default_factory=GuardConfig)
    on_reject: Literal["drop", "keep"] = "drop"

    @field_validator("answer_chars")
    @classmethod
    def _ordered(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not 0 <= v[0] <= v[1]:
            raise ValueError("answer_chars is [min, max] with 0 <= min <= max")
        return v

    def build(self) -> AudioSetCapsStage:
        return AudioSetCapsStage(self)

    def io(self, available: frozenset[Key]) -> StageIO:
        writes = [keys.caption(self.store_as)] + ([keys.score(self.store_as)] if self.scorer is not None else [])
        return StageIO(reads=[keys.AUDIO], writes=writes)

    def backend_roles(self) -> dict[str, type]:
        return {"backend": AudioLanguageModel, "llm": LanguageModel, "scorer": AudioTextScorer}


def kept_answers(aspects: list[str], answers: list[str], absent: list[str]) -> list[bool]:
    """Which answers go into the caption's inputs: the first always; each later one unless it
    contains an absence marker (case-insensitive), or is empty."""
    markers = [m.lower() for m in absent]
    keep = []
    for i, answer in enumerate(answers):
        text = (answer or "").strip().lower()
        keep.append(bool(text) and (i == 0 or not any(m in text for m in markers)))
    return keep


_PUNCTUATION = str.maketrans(string.punctuation, " " * len(string.punctuation))


def check_texts(caption: str, labels: str, pad: bool = True) -> tuple[str, str]:
    """(caption, labels) as the reference scores them: punctuation replaced by spaces, and the
    labels repeated until they are about as long as the caption (never cut)."""
    caption, labels = caption.translate(_PUNCTUATION), labels.translate(_PUNCTUATION)
    if pad and labels.strip() and len(labels) < len(caption):
        labels = labels + labels * ((len(caption) - len(labels)) // len(labels))
    return caption, labels


def labels_of(sample: Sample, field_name: str | None) -> str:
    if field_name is None:
        return ""
    if field_name == "alt_text":
        return (sample.alt_text or "").strip()
    from capmill.stages.caption import record_value

    value = record_value(sample.meta, field_name)
    if isinstance(value, (list, tuple)):
        value = ", ".join(str(v) for v in value)
    return "" if value is None or isinstance(value, dict) else str(value).strip()


@dataclass
class _Clip:
    """One sample in flight."""

    sample: Sample
    audio: Any
    labels: str
    answers: list[str] = field(default_factory=list)
    answer_rounds: int = 0
    tries: list[dict] = field(default_factory=list)  # every caption written: text, score, guards
    best: Guarded | None = None
    best_score: float | None = None
    labels_score: float | None = None
    accepted: bool = False
    guards: list[dict] = field(default_factory=list)
    embedding: Any = None  # the audio's CLAP embedding


class AudioSetCapsStage(Stage):
    config: AudioSetCapsConfig

    def __init__(self, config: AudioSetCapsConfig):
        super().__init__(config)
        dirs = config.prompt_dirs
        self.questions = [load_template("audio", q, dirs).check_slots(set()) for q in config.questions]
        self.aspects = [str(t.options.get("aspect") or t.name) for t in self.questions]
        self.template = load_template("audio", config.template, dirs).check_slots({"answers", "labels", "words"})
        self.guard = OutputGuard(config.guards, stage="audiosetcaps")
        self.language = detect(self.template.template) if config.guards.language == AUTO else config.guards.language

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        cfg = self.config
        self.backend = self.load_backend(cfg.backend, AudioLanguageModel, "audiosetcaps' backend")
        self.llm = self.load_backend(cfg.llm, LanguageModel, "audiosetcaps' llm")
        self.scorer = self.load_backend(cfg.scorer, AudioTextScorer, "audiosetcaps' scorer") if cfg.scorer else None

    def process(self, batch: list[Sample]) -> list[Sample]:
        from capmill.media.audio import audio_input

        clips = []
        for sample in batch:
            if sample.media.kind != AUDIO:
                sample.fail(STAGE_ERROR, f"audiosetcaps captions audio, not {sample.media.kind} samples")
            elif sample.media.audio is None:
                sample.fail(DECODE_ERROR, "audiosetcaps needs the decoded audio (audio.decode is off or decoding failed)")
            else:
                clips.append(_Clip(sample, audio_input(sample), labels_of(sample, self.config.labels)))
        clips = self._ask(clips)
        if clips:
            self._caption(clips)
        return batch

    # --- 1. questions ----------------------------------------------------------------------------

    def _ask(self, clips: list[_Clip]) -> list[_Clip]:
        """Every question for every clip, one backend call per round; clips whose answers fail
        are failed. Returns the clips that have answers."""
        cfg = self.config
        pending, notes = list(clips), [""] * len(clips)
        for attempt in range(cfg.answer_tries):
            requests = [VLMRequest(prompt=q.render() + (f"\n\n{note}" if note else ""), audio=clip.audio, params=cfg.params,
                                   tag=f"{clip.sample.key}:{q.name}" + (f"#{attempt}" if attempt else ""))
                        for clip, note in zip(pending, notes, strict=True) for q in self.questions]
            gens = self.backend.generate(requests)
            n = len(self.questions)
            again, notes = [], []
            for i, clip in enumerate(pending):
                mine = gens[i * n:(i + 1) * n]
                bad = next((g for g in mine if not g.ok), None)
                if bad is not None:
                    if not clip.answers:  # a failed repeat keeps the earlier answers
                        clip.sample.fail(TRANSIENT_ERROR if bad.transient else BACKEND_ERROR,
                                         f"audiosetcaps: {bad.error or 'empty answer'}")
                    continue
                clip.answers = [g.texts[0].strip() for g in mine]
                clip.answer_rounds = attempt + 1
                verdict = self._length(clip.answers)
                if verdict is not None:
                    again.append(clip)
                    notes.append(LENGTH_NOTES[verdict])
            pending = again
            if not pending:
                break
        return [c for c in clips if c.answers and c.sample.ok]

    def _length(self, answers: list[str]) -> str | None:
        """"short" or "long" when the answers together are outside `answer_chars`."""
        bounds = self.config.answer_chars
        if bounds is None:
            return None
        total = sum(len(a) for a in answers)
        return "short" if total < bounds[0] else "long" if total > bounds[1] else None

    # --- 2. caption and check --------------------------------------------------------------------

    def _request(self, clip: _Clip, attempt: int) -> ChatRequest:
        cfg = self.config
        keep = kept_answers(self.aspects, clip.answers, cfg.absent)
        lines = [f"{aspect}: {untrusted(answer, 'caption', 1000)}"
                 for aspect, answer, kept in zip(self.aspects, clip.answers, keep, strict=True) if kept]
        slots = {"answers": "\n".join(lines), "labels": untrusted(clip.labels, "alt_text", cfg.labels_max_chars),
                 "words": cfg.words}
        messages = []
        if self.template.system:
            messages.append({"role": "system", "content": self.template.render_system(**slots)})
        prompt = self.template.render(**slots)
        params = cfg.llm_params
        if attempt:
            prompt += "\n\n" + str(self.template.options.get("retry_note", "")).strip()
            base = params or GenerationParams()
            params = base.model_copy(update={"temperature": cfg.retry_temperature, "num_beams": 1,
                                             "seed": (base.seed or 0) + attempt})
        messages.append({"role": "user", "content": prompt})
        return ChatRequest(messages=messages, params=params, tag=f"{clip.sample.key}:audiosetcaps#{attempt}")

    def _sources(self, clip: _Clip) -> dict[str, str]:
        keep = kept_answers(self.aspects, clip.answers, self.config.absent)
        sources = {f"answer {a}": source_text(t, 1000) for a, t, k in zip(self.aspects, clip.answers, keep, strict=True) if k}
        if clip.labels:
            sources["labels"] = source_text(clip.labels, self.config.labels_max_chars)
        return sources

    def _caption(self, clips: list[_Clip]) -> None:
        from capmill.metrics.embedding import unit_rows
        from capmill.stages.differential_caption import guard_input, with_note

        cfg = self.config
        if self.scorer is not None:  # the batch's audio, once
            for clip, row in zip(clips, unit_rows(self.scorer.embed_audio([c.sample.media.audio for c in clips])), strict=True):
                clip.embedding = row
        pending = list(clips)
        for attempt in range(cfg.caption_tries):
            requests = [self._request(c, attempt) for c in pending]
            items = []
            for clip, request, gen in zip(pending, requests, self.llm.chat(requests), strict=True):
                if not gen.ok:
                    if clip.best is None and not clip.tries:
                        clip.sample.fail(TRANSIENT_ERROR if gen.transient else BACKEND_ERROR,
                                         f"audiosetcaps: {gen.error or 'empty caption'}")
                    continue
                items.append(Guarded(gen.texts[0].strip(), guard_input(request, gen, self._sources(clip), self.language),
                                     owner=(clip, request)))
            failing = {id(i) for i in settle(self.guard, items, lambda again: self.llm.chat(
                [with_note(i.owner[1], self.guard.retry_note(i.verdict, self.language)) for i in again]))}
            for item in items:
                if id(item) in failing:
                    item.reject()
                    clip = item.owner[0]
                    clip.guards.append(item.meta("dropped" if cfg.on_reject == "drop" else "flagged"))
                    if cfg.on_reject == "drop":
                        clip.tries.append({"text": item.text[:500], "rejected": item.verdict.reason})
                elif item.meta() is not None:
                    item.owner[0].guards.append(item.meta())
            # Flagged captions (on_reject: keep) are scored too, and kept only when no try passes.
            self._check([i for i in items if id(i) not in failing or cfg.on_reject == "keep"])
            pending = [c for c in pending if c.sample.ok and not c.accepted]
            if not pending or self.scorer is None or cfg.check == "none":
                break
        for clip in clips:
            if clip.sample.ok:
                self._store(clip)

    def _check(self, items: list[Guarded]) -> None:
        """Score this round's passing captions (one scorer call for them and their labels) and
        keep each clip's best; without a scorer the first passing caption is the one."""
        import numpy as np

        from capmill.metrics.embedding import unit_rows

        cfg = self.config
        if not items:
            return
        if self.scorer is None:
            for item in items:
                clip = item.owner[0]
                flagged = not item.verdict.ok
                if clip.best is None or (clip.best.verdict.reasons and not flagged):
                    clip.best, clip.accepted = item, not flagged
                clip.tries.append({"text": item.text[:500], **({"flagged": item.verdict.reason} if flagged else {})})
            return
        texts: list[str] = []
        rows: list[tuple[int, int | None]] = []  # per item: its caption's row, its labels' row
        for item in items:
            clip = item.owner[0]
            if cfg.check == "labels" and clip.labels:
                caption, labels = check_texts(item.text, clip.labels, cfg.pad_labels)
                rows.append((len(texts), len(texts) + 1))
                texts += [caption, labels]
            else:
                rows.append((len(texts), None))
                texts.append(item.text)
        emb = unit_rows(self.scorer.embed_texts(texts))
        for item, (at, labels_at) in zip(items, rows, strict=True):
            clip = item.owner[0]
            score = float(np.dot(clip.embedding, emb[at]))
            labels_score = float(np.dot(clip.embedding, emb[labels_at])) if labels_at is not None else None
            flagged = not item.verdict.ok  # kept by on_reject: keep; it never counts as accepted
            if cfg.check == "labels":
                accepted = labels_score is None or score >= labels_score  # no labels: nothing to beat
            else:
                accepted = cfg.check == "none" or score >= cfg.threshold
            clip.tries.append({"text": item.text[:500], "score": round(score, 6),
                               **({"labels_score": round(labels_score, 6)} if labels_score is not None else {}),
                               **({"flagged": item.verdict.reason} if flagged else {})})
            # Best: an unflagged caption over a flagged one, else the higher score.
            rank = (not flagged, score)
            if clip.best is None or clip.best_score is None or rank > (clip.best.verdict.ok, clip.best_score):
                clip.best, clip.best_score, clip.labels_score = item, score, labels_score
            clip.accepted = clip.accepted or (accepted and not flagged)

    def _store(self, clip: _Clip) -> None:
        cfg = self.config
        sample = clip.sample
        if clip.best is None:
            why = clip.guards[-1]["rejected"][-1]["reasons"][0] if clip.guards else "no caption"
            sample.meta.setdefault("guards", {})[cfg.store_as] = clip.guards
            sample.status, sample.error = DROPPED, f"guard: {cfg.store_as}: {why}"
            return
        keep = kept_answers(self.aspects, clip.answers, cfg.absent)
        meta: dict[str, Any] = {
            "qa": [{"aspect": a, "question": q.prompt_id, "answer": t, "kept": k}
                   for a, q, t, k in zip(self.aspects, self.questions, clip.answers, keep, strict=True)],
            "answer_rounds": clip.answer_rounds, "tries": clip.tries, "backend": self.backend.model_id,
            "llm": self.llm.model_id}
        if self.scorer is not None:
            meta.update(scorer=self.scorer.model_id, check=cfg.check, accepted=clip.accepted, score=clip.best_score)
            if clip.labels_score is not None:
                meta["labels_score"] = clip.labels_score
        if clip.guards:
            meta["guards"] = clip.guards
        if clip.best.verdict.reasons:
            meta["flagged"] = clip.best.verdict.reason
        sample.captions[cfg.store_as] = Caption(text=clip.best.text, source=cfg.store_as, model=self.llm.model_id,
                                                prompt_id=self.template.prompt_id, meta=meta)
        if clip.best_score is not None:
            sample.scores[cfg.store_as] = clip.best_score
