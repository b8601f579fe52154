"""The fusecap stage: vision experts' facts (objects, their attributes, printed text) fused into a
caption by an LLM.

FuseCap (Rotstein et al., WACV 2024, "FuseCap: Leveraging Large Language Models for Enriched
Fused Image Captions"): an object detector, an attribute recogniser and OCR describe the image;
an LLM merges their findings with the caption. Here:
- objects: the `detector` (zero-shot ones search for `vocabulary`, or their own default list);
- attributes: the `attributes` VLM asked about the crop of each object's best box (optional);
- text: the `ocr` backend (optional), lines in reading order;
- facts serialised deterministically, sorted and bounded (`capmill.verify.facts`), then the
  `fusecap` fuse template (`prompts/fuse/fusecap.yaml`) merges them with `caption` and, with
  `with_alt_text`, the AltText.
No fact at all leaves the caption unchanged (`meta["fallback"] = "no_facts"`).

OCR text and the AltText are untrusted (a sign in the photo can say "ignore your instructions"):
they enter the prompt only through `capmill.prompts.untrusted`, and the fused caption passes the
output guards with them as sources, so a caption that carries out an instruction printed in the
image is regenerated once and then replaced by the input caption. A detector or OCR failure on an
image is that sample's `stage_error`; the batch goes on.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from capmill import keys
from capmill.backends.base import (
    Detector,
    GenerationParams,
    LanguageModel,
    TextRecognizer,
    VisionLanguageModel,
    VLMRequest,
)
from capmill.components import BackendSpec, StageConfig
from capmill.errors import ConfigError
from capmill.guards.language import code_for
from capmill.keys import Key, StageIO
from capmill.prompts import load_template
from capmill.prompts.safety import source_text, untrusted
from capmill.sample import DECODE_ERROR, STAGE_ERROR, TRANSIENT_ERROR, Caption, Sample
from capmill.stages.base import RunContext, Stage
from capmill.verify import regions as geo
from capmill.verify.facts import Facts, group_objects, reading_order
from capmill.verify.steps import (
    FinalJob,
    VerifyGuardConfig,
    chat_request,
    expected_language,
    review,
    store_captions,
    verify_guard,
)

FUSECAP_SLOTS = {"caption", "facts", "ocr_text", "alt_text", "language_rule"}


class FuseCapStageConfig(StageConfig):
    type: Literal["fusecap"] = "fusecap"
    # The caption the facts are merged into.
    caption: str = "dsc"
    # Writes the fused caption.
    llm: BackendSpec
    detector: BackendSpec
    # Answers "what is this object like" on each object's crop; None: no attributes.
    attributes: BackendSpec | None = None
    # Reads printed text; None: no OCR.
    ocr: BackendSpec | None = None
    # Phrases zero-shot detectors look for; None: the detector's own list. Closed-set detectors
    # ignore it.
    vocabulary: list[str] | None = None
    # Also show the AltText to the LLM (names and places it may hold).
    with_alt_text: bool = False
    template: str = "fusecap"
    prompt_dirs: list[str] = Field(default_factory=list)
    attribute_template: str = "attribute"
    # Key of the fused caption; default: the template's name.
    store_as: str | None = None
    min_score: float = Field(0.3, ge=0, le=1)
    max_objects: int = Field(8, ge=0)
    min_ocr_confidence: float = Field(0.5, ge=0, le=1)
    max_text_lines: int = Field(8, ge=0)
    max_line_chars: int = Field(80, ge=8)
    # Object crops with a side below this (pixels) get no attribute question.
    min_crop_px: int = Field(16, ge=1)
    # Language of the fused caption: "caption", "alt_text" or a language name.
    language: str = "caption"
    params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=160))
    attribute_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=24))
    guards: VerifyGuardConfig = Field(default_factory=VerifyGuardConfig)
    max_chars: int = Field(2000, ge=64)

    def build(self) -> FuseCapStage:
        return FuseCapStage(self)

    def fused_key(self) -> str:
        return self.store_as or load_template("fuse", self.template, self.prompt_dirs).name

    def io(self, available: frozenset[Key]) -> StageIO:
        reads = [keys.IMAGE, keys.caption(self.caption)] + ([keys.ALT_TEXT] if self.with_alt_text else [])
        return StageIO(reads=reads, writes=[keys.caption(self.fused_key())])

    def backend_roles(self) -> dict[str, type]:
        return {"llm": LanguageModel, "detector": Detector, "attributes": VisionLanguageModel, "ocr": TextRecognizer}


class FuseCapStage(Stage):
    config: FuseCapStageConfig

    def __init__(self, config: FuseCapStageConfig):
        super().__init__(config)
        self.template = load_template("fuse", config.template, config.prompt_dirs).check_slots(FUSECAP_SLOTS)
        self.t_attribute = load_template("fusecap", config.attribute_template, config.prompt_dirs).check_slots({"object"})
        self.key = config.fused_key()
        if self.key == config.caption:
            raise ConfigError(f"{self.name}: store_as {self.key!r} would overwrite its input caption")
        rules = self.template.options.get("language", {})
        if config.language in ("caption", "alt_text"):
            self.language_rule = rules.get(config.language, "")
        else:
            self.language_rule = rules.get("named", "Write in {language}.").format(language=config.language)
        self.alt_block = self.template.options.get("alt_text", "{alt_text}")
        self.guard = verify_guard(config.guards, self.name)

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        cfg = self.config
        self.llm = self.load_backend(cfg.llm, LanguageModel, f"{self.name}: llm")
        self.detector = self.load_backend(cfg.detector, Detector, f"{self.name}: detector")
        self.vlm = self.load_backend(cfg.attributes, VisionLanguageModel, f"{self.name}: attributes") if cfg.attributes else None
        self.ocr = self.load_backend(cfg.ocr, TextRecognizer, f"{self.name}: ocr") if cfg.ocr else None

    def process(self, batch: list[Sample]) -> list[Sample]:
        cfg = self.config
        jobs = []
        for sample in batch:
            if sample.image.image is None:
                sample.fail(DECODE_ERROR, f"{self.name} needs a decoded image")
                continue
            caption = (sample.text(cfg.caption) or "").strip()
            if not caption:
                sample.fail(STAGE_ERROR, f"{self.name}: captions[{cfg.caption!r}] is empty")
                continue
            jobs.append({"sample": sample, "caption": caption, "facts": Facts(), "meta": {}})
        if not jobs:
            return batch
        self._experts(jobs)
        jobs = [j for j in jobs if j["sample"].ok]
        self._attributes(jobs)
        self._fuse(jobs)
        return batch

    def _experts(self, jobs: list[dict]) -> None:
        cfg = self.config
        images = [j["sample"].image.image for j in jobs]
        phrases = [list(cfg.vocabulary) for _ in jobs] if cfg.vocabulary else None
        found = self.detector.detect(images, phrases)
        read = self.ocr.read(images) if self.ocr is not None else [None] * len(jobs)
        for job, detections, text in zip(jobs, found, read, strict=True):
            sample = job["sample"]
            if detections.error is not None:
                sample.fail(STAGE_ERROR, f"{self.name}: detector: {detections.error}")
                continue
            if text is not None and text.error is not None:
                sample.fail(STAGE_ERROR, f"{self.name}: ocr: {text.error}")
                continue
            w, h = sample.image.image.size
            objects, dropped = group_objects([(d.box, d.label, d.score) for d in detections.items], w, h,
                                             cfg.min_score, cfg.max_objects)
            job["boxes"] = {d.label.lower().strip(): d.box for d in sorted(detections.items, key=lambda d: d.score)}
            lines, dropped_lines = ([], {}) if text is None else reading_order(
                [(line.text, line.box, line.confidence) for line in text.lines], cfg.min_ocr_confidence,
                cfg.max_text_lines, cfg.max_line_chars)
            job["facts"] = Facts(objects=objects, text_lines=lines, dropped={**dropped, **dropped_lines})

    def _attributes(self, jobs: list[dict]) -> None:
        cfg = self.config
        if self.vlm is None:
            return
        requests, owners = [], []
        for job in jobs:
            image = job["sample"].image.image
            job["meta"]["attributes"] = {}
            for k, fact in enumerate(job["facts"].objects):
                box = job["boxes"].get(fact.label)
                if box is None or geo.too_small(box, cfg.min_crop_px):
                    job["meta"]["attributes"][fact.label] = f"skipped: crop below min_crop_px={cfg.min_crop_px}"
                    continue
                prompt = self.t_attribute.render(object=untrusted(fact.label, "caption", 200))
                requests.append(VLMRequest(prompt=prompt, images=[image.crop(geo.pixel_box(box))],
                                           params=cfg.attribute_params, tag=f"{job['sample'].key}:{self.key}:{fact.label}"))
                owners.append((job, k, prompt))
        if not requests:
            return
        for (job, k, prompt), gen in zip(owners, self.vlm.generate(requests), strict=True):
            fact = job["facts"].objects[k]
            if not gen.ok:
                if gen.transient:  # not a verdict on the object: the sample is redone as a whole
                    job["sample"].fail(TRANSIENT_ERROR, f"{self.name}: attribute of {fact.label}: {gen.error}")
                job["meta"]["attributes"][fact.label] = f"no_answer: {gen.error or 'empty'}"
                continue
            text = " ".join(gen.texts[0].split()).rstrip(".")
            # An attribute is a phrase, not a sentence: it is not checked for a truncated end.
            reason = review(self.guard, text, {"object": fact.label}, prompt, gen.meta,
                            expected_language(self.guard, job["caption"]), skip=frozenset({"truncated"}))
            if reason is not None:
                job["meta"]["attributes"][fact.label] = f"guard: {reason}"
                continue
            job["meta"]["attributes"][fact.label] = "kept"
            job["facts"].objects[k] = type(fact)(label=fact.label, count=fact.count, score=fact.score, box=fact.box,
                                                 attributes=text[:cfg.max_line_chars])

    def _language(self, job: dict) -> str | None:
        cfg = self.config
        if self.guard.config.language not in ("auto", None):
            return self.guard.config.language
        if self.guard.config.language is None:
            return None
        if cfg.language == "caption":
            return expected_language(self.guard, job["caption"])
        if cfg.language == "alt_text":
            return expected_language(self.guard, job["sample"].alt_text or "")
        return code_for(cfg.language)

    def _fuse(self, jobs: list[dict]) -> None:
        cfg = self.config
        todo = []
        for job in jobs:
            if not job["sample"].ok:
                continue
            facts: Facts = job["facts"]
            if facts.empty:
                self._store(job, job["caption"], "no_facts")
                continue
            alt = job["sample"].alt_text if cfg.with_alt_text else None
            slots = {"caption": untrusted(job["caption"], "caption", cfg.max_chars),
                     "facts": untrusted(facts.objects_text() or "(none)", "caption", cfg.max_chars),
                     "ocr_text": untrusted(facts.ocr_text() or "(none)", "ocr_text", cfg.max_chars),
                     "alt_text": self.alt_block.format(alt_text=untrusted(alt, "alt_text", cfg.max_chars)) if alt else "",
                     "language_rule": self.language_rule}
            todo.append((job, chat_request(self.template, slots, cfg.params, f"{job['sample'].key}:{self.key}")))
        if not todo:
            return
        finals = []
        for (job, request), gen in zip(todo, self.llm.chat([r for _, r in todo]), strict=True):
            facts = job["facts"]
            sources = {"caption": source_text(job["caption"], cfg.max_chars), "facts": facts.objects_text(),
                       "ocr_text": source_text(facts.ocr_text(), cfg.max_chars)}
            if cfg.with_alt_text:
                sources["alt_text"] = source_text(job["sample"].alt_text, cfg.max_chars)
            finals.append(FinalJob(request=request, generation=gen, sources=sources, previous=job["caption"],
                                   owner=job, language=self._language(job), sample=job["sample"], meta=job["meta"]))
        store_captions(self.name, self.guard, self.llm, finals,
                       lambda job, settled: self._store(job, settled.text, settled.fallback, settled.guards))

    def _store(self, job: dict, text: str, fallback: str | None, guards: dict | None = None) -> None:
        meta = {"caption": self.config.caption, "fallback": fallback, "facts": job["facts"].to_meta(), **job["meta"]}
        if guards:
            meta["guards"] = guards
        job["sample"].captions[self.key] = Caption(
            text=text, source=self.key, model=self.llm.model_id if fallback is None else None,
            prompt_id=self.template.prompt_id, meta=meta)
