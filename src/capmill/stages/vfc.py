"""The vfc stage: a caption written only from the facts of several proposals that the image
confirms.

Visual Fact Checker (Ge et al., NVIDIA, CVPR 2024, "Visual Fact Checker: Enabling High-Fidelity
Detailed Caption Generation"). No public code; implemented from the paper's description:
1. propose: several captions of the image (`proposals`: caption keys written by earlier stages,
   e.g. two formats or two captioners);
2. verify: the LLM lists the objects and the other checkable claims of the proposals; each object
   is looked for by the detector (found when a matching box scores at least `object_threshold`)
   and, when the detector does not find it, asked about; every other claim is asked as a yes/no
   question (`ask`: P("yes") from the answer's logits, verified at `yes_threshold` or above), all
   questions of the batch in one call;
3. write: the LLM writes the caption from the verified facts alone, in the requested `style`
   (a format name: ssc, dsc, dsc_plus, tags; or an instruction of your own), told which facts were
   found false.
The CLIP-Image-Score the paper also proposes is an evaluation metric, not part of this stage.

`meta` records every object and claim with its score, how it was checked and the verdict. A list
that does not parse after one retry, nothing verified, or a caption the guards reject after
regeneration falls back to the first proposal with the reason; a detector failure on an image is
that sample's `stage_error`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from capmill import keys
from capmill.backends.base import AskingVisionLanguageModel, AskRequest, Detector, GenerationParams, LanguageModel
from capmill.components import BackendSpec, StageConfig, Strict
from capmill.errors import ConfigError
from capmill.keys import Key, StageIO
from capmill.prompts import load_template
from capmill.prompts.safety import source_text, untrusted
from capmill.sample import DECODE_ERROR, STAGE_ERROR, TRANSIENT_ERROR, Caption, Sample
from capmill.stages.base import RunContext, Stage
from capmill.verify.parse import parse_sections
from capmill.verify.regions import matches
from capmill.verify.steps import (
    FinalJob,
    VerifyGuardConfig,
    bullet_block,
    chat_parsed,
    chat_request,
    expected_language,
    store_captions,
    verify_guard,
)


class VfcPrompts(Strict):
    """Template names (built-in `prompts/vfc/`) or YAML paths of each step."""

    extract: str = "extract"
    check: str = "check"
    write: str = "write"


class VfcStageConfig(StageConfig):
    type: Literal["vfc"] = "vfc"
    # Caption keys of the proposals (at least one; the paper uses two captioners).
    proposals: list[str] = Field(min_length=1)
    # Lists objects and claims, and writes the final caption.
    llm: BackendSpec
    # Looks for the objects (zero-shot detectors search for the listed phrases).
    detector: BackendSpec
    # Answers the yes/no questions (an AskingVisionLanguageModel).
    vqa: BackendSpec
    # A style of the write template (ssc, dsc, dsc_plus, tags) or an instruction of your own.
    style: str = "dsc"
    store_as: str = "vfc"
    object_threshold: float = Field(0.3, ge=0, le=1)
    yes_threshold: float = Field(0.5, ge=0, le=1)
    # At most this many objects and claims per image are checked (the first the LLM lists).
    max_objects: int = Field(12, ge=0)
    max_claims: int = Field(12, ge=0)
    prompts: VfcPrompts = Field(default_factory=VfcPrompts)
    prompt_dirs: list[str] = Field(default_factory=list)
    extract_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=256))
    write_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=256))
    guards: VerifyGuardConfig = Field(default_factory=VerifyGuardConfig)
    max_chars: int = Field(2000, ge=64)

    def build(self) -> VfcStage:
        return VfcStage(self)

    def io(self, available: frozenset[Key]) -> StageIO:
        return StageIO(reads=[keys.IMAGE, *(keys.caption(p) for p in self.proposals)], writes=[keys.caption(self.store_as)])

    def backend_roles(self) -> dict[str, type]:
        return {"llm": LanguageModel, "detector": Detector, "vqa": AskingVisionLanguageModel}


class VfcStage(Stage):
    config: VfcStageConfig

    def __init__(self, config: VfcStageConfig):
        super().__init__(config)
        if config.store_as in config.proposals:
            raise ConfigError(f"{self.name}: store_as {config.store_as!r} would overwrite a proposal")
        p, dirs = config.prompts, config.prompt_dirs
        self.t_extract = load_template("vfc", p.extract, dirs).check_slots({"captions"})
        self.t_check = load_template("vfc", p.check, dirs).check_slots({"claim"})
        self.object_claim = self.t_check.options.get("object_claim", "{object}")
        self.t_write = load_template("vfc", p.write, dirs).check_slots({"verified", "refuted", "style"})
        styles = self.t_write.options.get("styles", {})
        self.style = styles.get(config.style, config.style)
        if config.style not in styles and len(config.style.split()) < 3:
            raise ConfigError(f"{self.name}: style {config.style!r} is neither a style of {self.t_write.prompt_id} "
                              f"({', '.join(sorted(styles))}) nor an instruction")
        self.guard = verify_guard(config.guards, self.name)

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        cfg = self.config
        self.llm = self.load_backend(cfg.llm, LanguageModel, f"{self.name}: llm")
        self.detector = self.load_backend(cfg.detector, Detector, f"{self.name}: detector")
        self.vqa = self.load_backend(cfg.vqa, AskingVisionLanguageModel, f"{self.name}: vqa")

    def process(self, batch: list[Sample]) -> list[Sample]:
        cfg = self.config
        jobs = []
        for sample in batch:
            if sample.image.image is None:
                sample.fail(DECODE_ERROR, f"{self.name} needs a decoded image")
                continue
            proposals = [(sample.text(k) or "").strip() for k in cfg.proposals]
            proposals = [p for p in proposals if p]
            if not proposals:
                sample.fail(STAGE_ERROR, f"{self.name}: every proposal ({', '.join(cfg.proposals)}) is empty")
                continue
            jobs.append({"sample": sample, "proposals": proposals, "meta": {}})
        if not jobs:
            return batch
        self._extract(jobs)
        self._verify([j for j in jobs if "facts" in j and j["sample"].ok])
        self._write(jobs)
        return batch

    def _extract(self, jobs: list[dict]) -> None:
        cfg = self.config
        requests = []
        for job in jobs:
            block = "\n\n".join(untrusted(p, "caption", cfg.max_chars) for p in job["proposals"])
            requests.append(chat_request(self.t_extract, {"captions": block}, cfg.extract_params,
                                         f"{job['sample'].key}:{cfg.store_as}:extract"))
        parsed = chat_parsed(self.llm, requests, lambda t: parse_sections(t, ("objects", "claims"), max_words=30),
                             self.t_extract.options.get("retry_note", "Reply only with the two lists."))
        for job, result in zip(jobs, parsed, strict=True):
            job["meta"]["extract"] = {"attempts": result.attempts}
            if result.transient:  # not a verdict on the proposals: the sample is redone as a whole
                job["sample"].fail(TRANSIENT_ERROR, f"{self.name}: extract: {result.reason}")
                continue
            if not result.ok:
                job["meta"]["extract"].update(failed=result.reason, raw=result.raw)
                job["fallback"] = f"extract_{result.reason.split(':')[0]}"
                continue
            job["facts"] = {"objects": result.value["objects"][:cfg.max_objects],
                            "claims": result.value["claims"][:cfg.max_claims]}

    def _verify(self, jobs: list[dict]) -> None:
        cfg = self.config
        if not jobs:
            return
        found = self.detector.detect([j["sample"].image.image for j in jobs], [j["facts"]["objects"] for j in jobs])
        questions, owners = [], []
        for job, detections in zip(jobs, found, strict=True):
            if detections.error is not None:
                job["sample"].fail(STAGE_ERROR, f"{self.name}: detector: {detections.error}")
                continue
            image = job["sample"].image.image
            job["objects"], job["claims"] = [], []
            for obj in job["facts"]["objects"]:
                scores = [d.score for d in detections.items if matches(d.label, [obj]) is not None]
                best = max(scores, default=0.0)
                entry = {"text": obj, "detector_score": round(best, 4)}
                job["objects"].append(entry)
                if best >= cfg.object_threshold:
                    entry.update(verified=True, by="detector")
                else:  # the detector did not find it (or cannot name it): ask
                    questions.append(AskRequest(image, self.t_check.render(
                        claim=untrusted(self.object_claim.format(object=obj), "caption", 300)),
                        tag=f"{job['sample'].key}:obj"))
                    owners.append((job, entry))
            for claim in job["facts"]["claims"]:
                entry = {"text": claim}
                job["claims"].append(entry)
                questions.append(AskRequest(image, self.t_check.render(claim=untrusted(claim, "caption", 500)),
                                            tag=f"{job['sample'].key}:claim"))
                owners.append((job, entry))
        if not questions:
            return
        for (job, entry), answer in zip(owners, self.vqa.ask(questions), strict=True):
            if answer.transient:  # not a verdict on the claim: the sample is redone as a whole
                job["sample"].fail(TRANSIENT_ERROR, f"{self.name}: question: {answer.error}")
            if not answer.ok:
                entry.update(verified=False, by="vqa", error=answer.error)
                continue
            entry.update(p_yes=round(answer.p_yes, 4), verified=answer.p_yes >= cfg.yes_threshold, by="vqa",
                         source=answer.source)

    def _write(self, jobs: list[dict]) -> None:
        cfg = self.config
        todo = []
        for job in jobs:
            sample = job["sample"]
            if not sample.ok:
                continue
            if "fallback" in job:
                self._store(job, job["proposals"][0], job.pop("fallback"))
                continue
            facts = job.get("objects", []) + job.get("claims", [])
            verified = [f["text"] for f in facts if f.get("verified")]
            refuted = [f["text"] for f in facts if not f.get("verified")]
            job["meta"].update(objects=job.get("objects", []), claims=job.get("claims", []))
            if not verified:
                self._store(job, job["proposals"][0], "nothing_verified")
                continue
            slots = {"verified": untrusted(bullet_block(verified), "caption", cfg.max_chars),
                     "refuted": untrusted(bullet_block(refuted), "caption", cfg.max_chars), "style": self.style}
            todo.append((job, chat_request(self.t_write, slots, cfg.write_params, f"{sample.key}:{cfg.store_as}"), verified))
        if not todo:
            return
        finals = []
        for (job, request, verified), gen in zip(todo, self.llm.chat([r for _, r, _ in todo]), strict=True):
            finals.append(FinalJob(request=request, generation=gen, previous=job["proposals"][0], owner=job,
                                   sources={f"proposal_{i}": source_text(p, cfg.max_chars)
                                            for i, p in enumerate(job["proposals"])} | {"verified": " ".join(verified)},
                                   language=expected_language(self.guard, *job["proposals"]),
                                   sample=job["sample"], meta=job["meta"]))
        store_captions(self.name, self.guard, self.llm, finals,
                       lambda job, settled: self._store(job, settled.text, settled.fallback, settled.guards))

    def _store(self, job: dict, text: str, fallback: str | None, guards: dict | None = None) -> None:
        cfg = self.config
        meta = {"proposals": list(cfg.proposals), "style": cfg.style, "fallback": fallback, **job["meta"]}
        if guards:
            meta["guards"] = guards
        job["sample"].captions[cfg.store_as] = Caption(
            text=text, source=cfg.store_as, model=self.llm.model_id if fallback is None else None,
            prompt_id=self.t_write.prompt_id, meta=meta)
