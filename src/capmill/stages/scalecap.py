"""The scalecap stage: a detailed caption, its hallucinated clauses filtered out, then enriched
with the VLM's answers about each trusted object.

ScaleCap (Xing et al., 2025, "ScaleCap: Inference-Time Scalable Image Captioning via
Dual-Modality Debiasing"; reference code Cooperx521/ScaleCap):
1. a detailed caption (the stage writes one, or reads `caption` from an earlier stage);
2. the golden-sentence filter (`capmill.verify.golden`): the caption teacher-forced through the
   VLM with and without the image, gaps on content words, clauses kept when their largest gap
   exceeds `threshold`;
3. an LLM lists the objects of the kept sentences; each becomes a detail question and a position
   question (deduplicated, at most `max_questions` per image: the method's scaling knob);
4. the VLM answers them, all questions of the batch in one call (optionally filtered again by
   the same rating, `second_filter`);
5. the LLM writes the final caption from the kept sentences, details and positions.
Difference from the reference: its two gathering prompts (details, positions) and the final one
are one prompt here, so an image costs two LLM calls, not four.

Every step hands the backend the whole batch. `meta` records each clause with its gap and
verdict, the objects, questions and answers (with any answer the guards dropped), and the
fallback: an objects list that does not parse after one retry, or a final caption the guards
reject after regeneration, falls back to the filtered caption with the reason.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from capmill import keys
from capmill.backends.base import (
    ContrastiveVisionLanguageModel,
    ForcedRequest,
    GenerationParams,
    LanguageModel,
    TextAnalyzer,
    VisionLanguageModel,
    VLMRequest,
)
from capmill.components import BackendSpec, StageConfig, Strict, default_backend
from capmill.errors import ConfigError
from capmill.keys import Key, StageIO
from capmill.prompts import load_template
from capmill.prompts.safety import source_text, untrusted
from capmill.sample import BACKEND_ERROR, DECODE_ERROR, STAGE_ERROR, TRANSIENT_ERROR, Caption, Sample
from capmill.stages.base import RunContext, Stage
from capmill.verify.golden import GoldenResult, content_mask, golden_sentences, masked_gaps
from capmill.verify.parse import parse_items
from capmill.verify.steps import (
    FinalJob,
    VerifyGuardConfig,
    bullet_block,
    chat_parsed,
    chat_request,
    clean_caption,
    expected_language,
    failure_status,
    review,
    store_captions,
    verify_guard,
)


class ScaleCapPrompts(Strict):
    """Template names (built-in `prompts/scalecap/`) or YAML paths of each step."""

    describe: str = "describe"
    objects: str = "objects"
    detail: str = "detail"
    position: str = "position"
    final: str = "final"


class ScaleCapStageConfig(StageConfig):
    type: Literal["scalecap"] = "scalecap"
    # The VLM that writes the first caption and answers the questions.
    vlm: BackendSpec
    # The VLM whose logits rate the caption (ContrastiveVisionLanguageModel); None: `vlm`, which
    # then must expose logits (transformers does; an HTTP server does not).
    scorer: BackendSpec | None = None
    # The LLM that lists objects and writes the final caption.
    llm: BackendSpec
    # Parts of speech for the content-word mask.
    analyzer: BackendSpec = Field(default_factory=default_backend("spacy"))
    # Start from this earlier caption (e.g. "dsc_plus"); None: the stage writes its own.
    caption: str | None = None
    store_as: str = "scalecap"
    # A clause is kept when its largest gap exceeds this (the paper's default: 0).
    threshold: float = 0.0
    # Questions per image (a detail and a position question per object): the scaling knob.
    max_questions: int = Field(8, ge=0)
    # Rate the VLM's answers with the same filter before they are used.
    second_filter: bool = False
    prompts: ScaleCapPrompts = Field(default_factory=ScaleCapPrompts)
    prompt_dirs: list[str] = Field(default_factory=list)
    caption_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=256))
    answer_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=96))
    objects_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=96))
    final_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=320))
    guards: VerifyGuardConfig = Field(default_factory=VerifyGuardConfig)
    # Characters of each untrusted text allowed into a prompt.
    max_chars: int = Field(2000, ge=64)

    def build(self) -> ScaleCapStage:
        return ScaleCapStage(self)

    def io(self, available: frozenset[Key]) -> StageIO:
        reads = [keys.IMAGE] + ([keys.caption(self.caption)] if self.caption else [])
        return StageIO(reads=reads, writes=[keys.caption(self.store_as)])

    def backend_roles(self) -> dict[str, type]:
        return {"vlm": ContrastiveVisionLanguageModel if self.scorer is None else VisionLanguageModel,
                "scorer": ContrastiveVisionLanguageModel, "llm": LanguageModel, "analyzer": TextAnalyzer}


class _Job:
    """One image in flight through the steps."""

    def __init__(self, sample: Sample):
        self.sample = sample
        self.caption = ""
        self.golden: GoldenResult | None = None
        self.objects: list[str] = []
        self.answers: list[dict] = []
        self.meta: dict = {}


class ScaleCapStage(Stage):
    config: ScaleCapStageConfig

    def __init__(self, config: ScaleCapStageConfig):
        super().__init__(config)
        if config.caption == config.store_as:
            raise ConfigError(f"{self.name}: store_as {config.store_as!r} would overwrite its input caption")
        p, dirs = config.prompts, config.prompt_dirs
        self.t_describe = load_template("scalecap", p.describe, dirs).check_slots(set())
        self.t_objects = load_template("scalecap", p.objects, dirs).check_slots({"sentences", "max_objects"})
        self.t_detail = load_template("scalecap", p.detail, dirs).check_slots({"object"})
        self.t_position = load_template("scalecap", p.position, dirs).check_slots({"object"})
        self.t_final = load_template("scalecap", p.final, dirs).check_slots({"sentences", "details", "positions"})
        self.guard = verify_guard(config.guards, self.name)

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        cfg = self.config
        self.vlm = self.load_backend(cfg.vlm, VisionLanguageModel, f"{self.name}: vlm")
        if cfg.scorer is None:
            self.scorer = self._require(self.vlm, ContrastiveVisionLanguageModel, "vlm (or set scorer)")
        else:
            self.scorer = self.load_backend(cfg.scorer, ContrastiveVisionLanguageModel, f"{self.name}: scorer")
        self.llm = self.load_backend(cfg.llm, LanguageModel, f"{self.name}: llm")
        self.analyzer = self.load_backend(cfg.analyzer, TextAnalyzer, f"{self.name}: analyzer")

    def _require(self, backend, protocol, role):
        from capmill.backends.base import require

        return require(backend, protocol, f"{self.name}: {role}")

    # --- steps -------------------------------------------------------------------------------

    def process(self, batch: list[Sample]) -> list[Sample]:
        cfg = self.config
        jobs = []
        for sample in batch:
            if sample.image.image is None:
                sample.fail(DECODE_ERROR, f"{self.name} needs a decoded image")
                continue
            job = _Job(sample)
            if cfg.caption:
                job.caption = (sample.text(cfg.caption) or "").strip()
                if not job.caption:
                    sample.fail(STAGE_ERROR, f"{self.name}: captions[{cfg.caption!r}] is empty")
                    continue
            jobs.append(job)
        if not cfg.caption:
            jobs = self._first_captions(jobs)
        if not jobs:
            return batch
        self._rate([(j, j.caption, self.t_describe.render(), "golden") for j in jobs])
        for job in jobs:
            if job.golden is not None and not job.golden.text:
                job.sample.fail(STAGE_ERROR, f"{self.name}: the caption has no sentence to rate")
        jobs = [j for j in jobs if j.golden is not None and j.golden.text]
        self._objects(jobs)
        self._answer([j for j in jobs if j.objects])
        self._final(jobs)
        return batch

    def _first_captions(self, jobs: list[_Job]) -> list[_Job]:
        prompt = self.t_describe.render()
        requests = [VLMRequest(prompt=prompt, images=[j.sample.image.image], params=self.config.caption_params,
                               tag=f"{j.sample.key}:{self.config.store_as}:caption") for j in jobs]
        kept = []
        for job, gen in zip(jobs, self.vlm.generate(requests) if requests else [], strict=True):
            if not gen.ok:
                job.sample.fail(failure_status(gen), f"{self.name}: first caption: {gen.error or 'no text'}")
                continue
            text = clean_caption(gen.texts[0])
            reason = review(self.guard, text, {}, prompt, gen.meta, expected_language(self.guard, text))
            if reason is not None:
                job.sample.fail(STAGE_ERROR, f"{self.name}: the first caption was rejected by the guards ({reason}); "
                                "nothing to fall back to (start from an earlier caption with `caption:`)")
                continue
            job.caption = text
            kept.append(job)
        return kept

    def _rate(self, items: list[tuple[_Job, str, str, object]]) -> None:
        """The golden-sentence filter on each text: one forced-logits call, one analysis call.
        `target` is "golden" (the caption) or an answer dict (second filter)."""
        if not items:
            return
        requests = [ForcedRequest(image=j.sample.image.image, prompt=prompt, continuation=text,
                                  tag=f"{j.sample.key}:{self.config.store_as}:rate") for j, text, prompt, _ in items]
        logits = self.scorer.forced_logits(requests)
        analyses = self.analyzer.analyze(["".join(lg.tokens) for lg in logits])
        for (job, text, _, target), lg, analysis in zip(items, logits, analyses, strict=True):
            if lg.error is not None:
                if target == "golden":
                    job.sample.fail(BACKEND_ERROR, f"{self.name}: rating the caption: {lg.error}")
                else:
                    target["second_filter"] = {"error": lg.error}
                continue
            gaps = masked_gaps(lg.with_image, lg.without_image, content_mask(lg.tokens, analysis.words))
            result = golden_sentences(lg.tokens, gaps, self.config.threshold)
            if not result.sentences and text.strip():
                result.caption, result.whole = text, True
            if target == "golden":
                job.golden = result
                job.meta["golden"] = result.meta()
            else:
                target["second_filter"] = result.meta()
                target["text"] = result.text

    def _objects(self, jobs: list[_Job]) -> None:
        cfg = self.config
        limit = cfg.max_questions // 2
        if limit == 0 or not jobs:
            return
        requests = [chat_request(self.t_objects, {"sentences": untrusted(j.golden.text, "caption", cfg.max_chars),
                                                  "max_objects": limit},
                                 cfg.objects_params, f"{j.sample.key}:{cfg.store_as}:objects") for j in jobs]
        parsed = chat_parsed(self.llm, requests, lambda t: parse_items(t, max_items=limit, max_words=4),
                             self.t_objects.options.get("retry_note", "Reply only with the list."))
        for job, result in zip(jobs, parsed, strict=True):
            job.meta["objects"] = {"attempts": result.attempts, "found": result.value or []}
            if result.transient:  # not a verdict on the caption: the sample is redone as a whole
                job.sample.fail(TRANSIENT_ERROR, f"{self.name}: objects: {result.reason}")
                continue
            if not result.ok:
                job.meta["objects"]["failed"] = result.reason
                job.meta["objects"]["raw"] = result.raw
                job.meta["fallback_reason"] = f"objects_{result.reason.split(':')[0]}"
                continue
            job.objects = result.value

    def _answer(self, jobs: list[_Job]) -> None:
        cfg = self.config
        requests, owners = [], []
        for job in jobs:
            image = job.sample.image.image
            for obj in job.objects:
                entry = {"object": obj}
                job.answers.append(entry)
                for kind, template in (("detail", self.t_detail), ("position", self.t_position)):
                    prompt = template.render(object=untrusted(obj, "caption", 200))
                    requests.append(VLMRequest(prompt=prompt, images=[image], params=cfg.answer_params,
                                               tag=f"{job.sample.key}:{cfg.store_as}:{kind}:{obj}"))
                    owners.append((job, entry, kind, prompt))
        if not requests:
            return
        rated = []
        for (job, entry, kind, prompt), gen in zip(owners, self.vlm.generate(requests), strict=True):
            if not gen.ok:
                if gen.transient:
                    job.sample.fail(TRANSIENT_ERROR, f"{self.name}: {kind} question: {gen.error}")
                entry[kind] = None
                entry.setdefault("dropped", {})[kind] = f"no_answer: {gen.error or 'empty'}"
                continue
            text = " ".join(gen.texts[0].split())
            reason = review(self.guard, text, {"object": entry["object"]}, prompt, gen.meta,
                            expected_language(self.guard, job.caption))
            if reason is not None:
                entry[kind] = None
                entry.setdefault("dropped", {})[kind] = reason
                continue
            entry[kind] = text
            if cfg.second_filter:
                holder = {"kind": kind}
                entry.setdefault("rated", {})[kind] = holder
                rated.append((job, text, prompt, holder))
        if cfg.second_filter:
            self._rate(rated)
            for job in jobs:
                for entry in job.answers:
                    for kind, holder in entry.pop("rated", {}).items():
                        if "text" in holder:
                            entry[kind] = holder["text"]
                        entry.setdefault("second_filter", {})[kind] = holder.get("second_filter")

    def _final(self, jobs: list[_Job]) -> None:
        cfg = self.config
        todo, finals = [], []
        for job in jobs:
            if not job.sample.ok:
                continue
            if "fallback_reason" in job.meta:
                self._store(job, job.golden.text, fallback=job.meta.pop("fallback_reason"))
                continue
            details = [f"{a['object']}: {a['detail']}" for a in job.answers if a.get("detail")]
            positions = [f"{a['object']}: {a['position']}" for a in job.answers if a.get("position")]
            slots = {"sentences": untrusted(bullet_block(job.golden.kept), "caption", cfg.max_chars),
                     "details": untrusted(bullet_block(details), "caption", cfg.max_chars),
                     "positions": untrusted(bullet_block(positions), "caption", cfg.max_chars)}
            todo.append((job, chat_request(self.t_final, slots, cfg.final_params, f"{job.sample.key}:{cfg.store_as}"),
                         details, positions))
        if not todo:
            return
        generations = self.llm.chat([request for _, request, _, _ in todo])
        for (job, request, details, positions), gen in zip(todo, generations, strict=True):
            sources = {"caption": source_text(job.caption, cfg.max_chars), "details": " ".join(details),
                       "positions": " ".join(positions)}
            finals.append(FinalJob(request=request, generation=gen, sources=sources, previous=job.golden.text,
                                   owner=job, language=expected_language(self.guard, job.caption), sample=job.sample,
                                   meta=job.meta))
        store_captions(self.name, self.guard, self.llm, finals,
                       lambda job, settled: self._store(job, settled.text, settled.fallback, settled.guards))

    def _store(self, job: _Job, text: str, fallback: str | None, guards: dict | None = None) -> None:
        cfg = self.config
        meta = {"input": cfg.caption or "generated", "fallback": fallback, **job.meta,
                "questions": job.answers}
        if not cfg.caption:
            meta["first_caption"] = job.caption
        if guards:
            meta["guards"] = guards
        job.sample.captions[cfg.store_as] = Caption(
            text=text, source=cfg.store_as, model=self.llm.model_id if fallback is None else None,
            prompt_id=self.t_final.prompt_id, meta=meta)
