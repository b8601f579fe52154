"""SLAM-AAC's CLAP-Refine: one caption per beam size, the one CLAP prefers kept (`type: clap_refine`).

SLAM-AAC (Chen et al., "SLAM-AAC: Enhancing Audio Captioning with Paraphrasing Augmentation and
CLAP-Refine through LLMs", ICASSP 2025; reference X-LANCE/SLAM-LLM
`examples/slam_aac/utils/clap_refine.py`) decodes each clip once per beam size from 2 to 8,
keeping the best sequence of each, embeds the clip (its first 10 s) and every candidate with a
CLAP model, and keeps the candidate most similar to the clip (`--rank 1`; another rank keeps the
n-th best).

It is two generic steps: candidates from a sweep of one decoding setting, then a rank by a
scorer. This stage runs exactly those two for one audio captioner and one audio-text scorer,
and stores what a generic rank would: `captions[STORE_AS]` is the chosen candidate, its `meta`
holds `chosen` (e.g. "beam4"), `ranking` (every candidate: name, the beam sizes that gave that
text, text, score, rank) and `candidates` (the other texts, best first, which SPIDEr-max reads),
and `scores[STORE_AS]` is its CLAP cosine. Where a pipeline has the generic `candidates`
(`sweep: {num_beams: [2, …, 8]}`) and `rank` (`scorer: {type: clap}`) stages, they do the same
job, and this stage is the shorthand.

Cost: all beam sizes of all the batch's clips go to the backend in one call (the transformers
backend groups requests by decoding setting, so that is one `generate` per beam size and
`batch_size` chunk); the scorer embeds the batch's audio once and all candidates in one call.
Candidates the output guards reject do not compete (no regeneration: another candidate is the
alternative), or with `on_reject: keep` compete flagged, after every unflagged one; identical
texts from several beam sizes compete once. A candidate over its
format's length target is cut at a sentence. A clip left with no candidate is dropped with the
reason.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from capmill import keys
from capmill.backends.base import AudioLanguageModel, AudioTextScorer, GenerationParams, VLMRequest
from capmill.components import BackendSpec, StageConfig
from capmill.guards import GuardConfig, OutputGuard, finish_reason
from capmill.guards.checks import GuardInput
from capmill.guards.config import AUTO
from capmill.guards.language import detect
from capmill.keys import Key, StageIO
from capmill.prompts import load_template, untrusted
from capmill.prompts.safety import source_text, without_untrusted
from capmill.sample import AUDIO, BACKEND_ERROR, DECODE_ERROR, DROPPED, STAGE_ERROR, TRANSIENT_ERROR, Caption, Sample
from capmill.stages.base import RunContext, Stage
from capmill.stages.caption import AUDIO_SLOTS, FORMAT_SLOTS
from capmill.text.length import counter_for, length_settings, trim


class ClapRefineConfig(StageConfig):
    type: Literal["clap_refine"] = "clap_refine"
    # The audio captioner (an AudioLanguageModel).
    backend: BackendSpec
    # The audio-text scorer that ranks the candidates (CLAP).
    scorer: BackendSpec
    # The caption format whose audio prompt asks for the caption (built-in or a YAML path).
    format: str = "ssc"
    prompt_dirs: list[str] = Field(default_factory=list)
    # One candidate per beam size (greedy beam search, the best sequence of each).
    beams: list[int] = Field(default_factory=lambda: [2, 3, 4, 5, 6, 7, 8], min_length=1)
    # Decoding settings the beam sizes are set on (max_new_tokens, repetition_penalty, ...).
    params: GenerationParams | None = None
    # Which ranked candidate to keep (1: the one the scorer prefers).
    rank: int = Field(1, ge=1)
    # Seconds of audio the scorer hears from the clip's start (the reference's 10); None: all of it.
    scorer_seconds: float | None = Field(10.0, gt=0)
    store_as: str = "clap_refine"
    guards: GuardConfig = Field(default_factory=GuardConfig)
    # A candidate the guards reject: "omit" leaves it out of the ranking; "keep" keeps it flagged
    # (`flagged` in its ranking entry), ranked after every unflagged candidate.
    on_reject: Literal["omit", "keep"] = "omit"

    def build(self) -> ClapRefineStage:
        return ClapRefineStage(self)

    def io(self, available: frozenset[Key]) -> StageIO:
        return StageIO(reads=[keys.AUDIO], writes=[keys.caption(self.store_as), keys.score(self.store_as)])

    def backend_roles(self) -> dict[str, type]:
        return {"backend": AudioLanguageModel, "scorer": AudioTextScorer}


def rank_candidates(scores: list[float], rank: int = 1) -> tuple[list[int], int]:
    """(order best first, index of the kept candidate): ties keep candidate order, NaN ranks
    last; `rank` beyond the candidates keeps the last."""
    order = sorted(range(len(scores)), key=lambda i: (math.isnan(scores[i]), -scores[i] if not math.isnan(scores[i]) else 0, i))
    return order, order[min(rank, len(order)) - 1]


class ClapRefineStage(Stage):
    config: ClapRefineConfig

    def __init__(self, config: ClapRefineConfig):
        super().__init__(config)
        base = load_template("formats", config.format, config.prompt_dirs)
        template = base.for_kind(AUDIO)
        if template is None:
            from capmill.errors import ConfigError

            raise ConfigError(f"clap_refine: format {config.format!r} has no prompt for audio (a `media.audio` block)")
        self.template = template.check_slots(FORMAT_SLOTS | AUDIO_SLOTS)
        self.target, _ = length_settings(template.options, f"format {template.prompt_id}")
        self.count = counter_for(self.target) if self.target is not None else None
        self.guard = OutputGuard(config.guards, stage="clap_refine")
        language = config.guards.language
        self.language = detect(template.template) if language == AUTO else language

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.backend = self.load_backend(self.config.backend, AudioLanguageModel, "clap_refine's backend")
        self.scorer = self.load_backend(self.config.scorer, AudioTextScorer, "clap_refine's scorer")

    def process(self, batch: list[Sample]) -> list[Sample]:
        from capmill.media.audio import audio_input

        cfg = self.config
        live = []
        for sample in batch:
            if sample.media.kind != AUDIO:
                sample.fail(STAGE_ERROR, f"clap_refine captions audio, not {sample.media.kind} samples")
            elif sample.media.audio is None:
                sample.fail(DECODE_ERROR, "clap_refine needs the decoded audio (audio.decode is off or decoding failed)")
            else:
                live.append(sample)
        if not live:
            return batch
        base = cfg.params or GenerationParams()
        requests = []
        for sample in live:
            audio = audio_input(sample)
            slots = {"word_count": self.target.max if self.target else 50, "seconds": f"{audio.seconds:.0f}",
                     "alt_text": untrusted(sample.alt_text, "alt_text")}
            prompt, system = self.template.render(**slots), self.template.render_system(**slots)
            for beams in cfg.beams:
                params = base.model_copy(update={"num_beams": beams, "temperature": 0.0})
                requests.append(VLMRequest(prompt=prompt, system=system, audio=audio, params=params,
                                           tag=f"{sample.key}:beam{beams}"))
        gens = self.backend.generate(requests)
        per_sample: list[list[dict[str, Any]]] = []
        n = len(cfg.beams)
        for i, sample in enumerate(live):
            per_sample.append(self._candidates(sample, requests[i * n:(i + 1) * n], gens[i * n:(i + 1) * n]))
        self._rank(live, per_sample)
        return batch

    def _candidates(self, sample: Sample, requests: list[VLMRequest], gens: list) -> list[dict[str, Any]]:
        """The competing candidates of one clip: guarded, cut to the format's target, one per text."""
        found: dict[str, dict[str, Any]] = {}
        rejected = []
        errors = []
        for beams, request, gen in zip(self.config.beams, requests, gens, strict=True):
            if not gen.ok:
                errors.append(gen)
                continue
            text = gen.texts[0].strip()
            shown = {"alt_text": source_text(sample.alt_text, 1000)} if "alt_text" in self.template.slots() else {}
            given = GuardInput(sources=shown, prompt=without_untrusted(f"{request.system or ''}\n{request.prompt}"),
                               finish=finish_reason(gen.meta), language=self.language)
            over = self.count is not None and self.count(text) > self.target.max
            verdict = self.guard.review(text, given, frozenset({"truncated"}) if over else frozenset())
            if not verdict.ok:
                rejected.append({"beams": beams, "text": text[:500], **verdict.to_meta()})
                if self.config.on_reject == "omit":
                    continue
            if over:
                text = trim(text, self.target.max, self.count)
            if text in found:
                found[text]["beams"].append(beams)
            else:
                found[text] = {"name": f"beam{beams}", "beams": [beams], "text": text,
                               **({"flagged": verdict.reason} if not verdict.ok else {})}
        if rejected:
            sample.meta.setdefault("guards", {})[self.config.store_as] = rejected
        if not found:
            if errors and len(errors) == len(gens):
                bad = errors[0]
                sample.fail(TRANSIENT_ERROR if bad.transient else BACKEND_ERROR,
                            f"clap_refine: {bad.error or 'empty caption'}")
            elif not sample.ok:
                pass
            else:
                sample.status, sample.error = DROPPED, (
                    f"guard: {self.config.store_as}: every candidate rejected ({rejected[0]['reasons'][0]})"
                    if rejected else f"clap_refine: no candidate caption")
        return list(found.values())

    def _rank(self, live: list[Sample], per_sample: list[list[dict[str, Any]]]) -> None:
        """One scorer call for the clips' audio and one for every candidate; each clip keeps its
        `rank`-th best."""
        import numpy as np

        from capmill.metrics.embedding import unit_rows
        from capmill.sample import Waveform

        cfg = self.config
        ranked = [(s, c) for s, c in zip(live, per_sample, strict=True) if c and s.ok]
        if not ranked:
            return
        waves = []
        for sample, _ in ranked:
            wave = sample.media.audio
            if cfg.scorer_seconds is not None:
                wave = Waveform(wave.samples[: int(round(cfg.scorer_seconds * wave.rate))], wave.rate)
            waves.append(wave)
        audio = unit_rows(self.scorer.embed_audio(waves))
        texts = [c["text"] for _, cands in ranked for c in cands]
        emb = unit_rows(self.scorer.embed_texts(texts))
        at = 0
        for row, (sample, cands) in enumerate(ranked):
            scores = [float(v) for v in emb[at:at + len(cands)] @ audio[row]]
            at += len(cands)
            # Flagged candidates (on_reject: keep) rank after every unflagged one.
            order, kept = rank_candidates([s if "flagged" not in c else s - 1e9 for s, c in zip(scores, cands, strict=True)],
                                          cfg.rank)
            ranking = [{**cands[j], "score": round(scores[j], 6), "rank": r + 1} for r, j in enumerate(order)]
            chosen = cands[kept]
            meta = {"chosen": chosen["name"], "beams": chosen["beams"], "ranking": ranking,
                    "candidates": [cands[j]["text"] for j in order if j != kept], "scorer": self.scorer.model_id,
                    "rank": cfg.rank}
            if "flagged" in chosen:
                meta["flagged"] = chosen["flagged"]
            sample.captions[cfg.store_as] = Caption(text=chosen["text"], source=cfg.store_as, model=self.backend.model_id,
                                                    prompt_id=self.template.prompt_id, meta=meta)
            sample.scores[cfg.store_as] = scores[kept] if not np.isnan(scores[kept]) else float("nan")
