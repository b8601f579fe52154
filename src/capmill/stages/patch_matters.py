"""The patch_matters stage: a caption enriched with what its regions show, where neighbouring
regions agree.

Patch Matters (Zhang et al., CVPR 2025, "Patch Matters: Training-free Fine-grained Image Caption
Enhancement via Local Perception"; reference code planetyoon/Patch-Matters):
1. the VLM writes a one-sentence caption; the LLM lists its objects; the detector looks for them;
   matched boxes with a score of at least `box_threshold` (0.3) give the main region, the whole
   image when none matches (`capmill.verify.regions`);
2. the main region and its four equal sub-regions are cropped; the main region is described on
   its own only when its IoU with the whole image is at most `main_iou_skip` (0.4; above that the
   global caption covers it); crops smaller than `min_region_px` are skipped with the reason;
3. the VLM describes every crop (all crops of the batch in one call);
4. each pair of adjacent sub-regions goes to the LLM, which sorts their sentences into what both
   say (kept), what they contradict each other on (dropped) and what only one says (kept);
5. the LLM rewrites the global caption (`caption` from an earlier stage, or one the VLM writes)
   with the kept facts and their normalised boxes.
The thresholds (0.3, 0.4) are the defaults the method describes; they were not found in the
reference code. Differences: each region is described once (the paper samples three
descriptions per region at temperature 0.7 and filters them by an image-text score), and the
adjacent-pair merge keeps a lone region's own description when none of its neighbours could be
described.

Bad input costs one sample: a detector failure on an image is that sample's `stage_error`; an
objects list or a merge that does not parse after one retry is recorded (no objects: the whole
image is the main region; a failed merge: that pair adds nothing); a final caption the guards
reject after regeneration falls back to the global caption.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from capmill import keys
from capmill.backends.base import Detector, GenerationParams, LanguageModel, VisionLanguageModel, VLMRequest
from capmill.components import BackendSpec, StageConfig, Strict
from capmill.errors import ConfigError
from capmill.keys import Key, StageIO
from capmill.prompts import load_template
from capmill.prompts.safety import source_text, untrusted
from capmill.sample import DECODE_ERROR, STAGE_ERROR, TRANSIENT_ERROR, Caption, Sample
from capmill.stages.base import RunContext, Stage
from capmill.verify import regions as geo
from capmill.verify.parse import parse_items, parse_sections
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

MERGE_SECTIONS = ("agree", "conflict", "unique")


class PatchMattersPrompts(Strict):
    """Template names (built-in `prompts/patch_matters/`) or YAML paths of each step."""

    summary: str = "summary"
    describe: str = "describe"
    objects: str = "objects"
    region: str = "region"
    merge: str = "merge"
    final: str = "final"


class PatchMattersStageConfig(StageConfig):
    type: Literal["patch_matters"] = "patch_matters"
    # The VLM describing the image and its regions.
    vlm: BackendSpec
    # The LLM listing objects, merging neighbouring regions and writing the final caption.
    llm: BackendSpec
    # Finds the objects of the one-sentence caption (zero-shot detectors search for them).
    detector: BackendSpec
    # The global caption to enrich (e.g. "dsc_plus"); None: the VLM writes one.
    caption: str | None = None
    store_as: str = "patch_matters"
    # Detections at or above this score can form the main region.
    box_threshold: float = Field(0.3, ge=0, le=1)
    # The main region is described on its own only when its IoU with the whole image is at most this.
    main_iou_skip: float = Field(0.4, ge=0, le=1)
    # Crops with a side shorter than this (pixels) are not described: below what the VLM can read.
    min_region_px: int = Field(32, ge=1)
    prompts: PatchMattersPrompts = Field(default_factory=PatchMattersPrompts)
    prompt_dirs: list[str] = Field(default_factory=list)
    summary_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=40))
    caption_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=256))
    region_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=128))
    objects_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=64))
    merge_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=256))
    final_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=320))
    guards: VerifyGuardConfig = Field(default_factory=VerifyGuardConfig)
    max_chars: int = Field(2000, ge=64)

    def build(self) -> PatchMattersStage:
        return PatchMattersStage(self)

    def io(self, available: frozenset[Key]) -> StageIO:
        reads = [keys.IMAGE] + ([keys.caption(self.caption)] if self.caption else [])
        return StageIO(reads=reads, writes=[keys.caption(self.store_as)])

    def backend_roles(self) -> dict[str, type]:
        return {"vlm": VisionLanguageModel, "llm": LanguageModel, "detector": Detector}


@dataclass
class _Region:
    name: str
    box: geo.Box
    caption: str | None = None
    skipped: str | None = None


@dataclass
class _Job:
    sample: Sample
    caption: str = ""
    summary: str = ""
    objects: list[str] = field(default_factory=list)
    regions: list[_Region] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return self.sample.image.image.size


class PatchMattersStage(Stage):
    config: PatchMattersStageConfig

    def __init__(self, config: PatchMattersStageConfig):
        super().__init__(config)
        if config.caption == config.store_as:
            raise ConfigError(f"{self.name}: store_as {config.store_as!r} would overwrite its input caption")
        p, dirs = config.prompts, config.prompt_dirs
        self.t_summary = load_template("patch_matters", p.summary, dirs).check_slots(set())
        self.t_describe = load_template("patch_matters", p.describe, dirs).check_slots(set())
        self.t_objects = load_template("patch_matters", p.objects, dirs).check_slots({"caption"})
        self.t_region = load_template("patch_matters", p.region, dirs).check_slots(set())
        self.t_merge = load_template("patch_matters", p.merge, dirs).check_slots({"first", "second", "first_box",
                                                                                 "second_box"})
        self.t_final = load_template("patch_matters", p.final, dirs).check_slots({"caption", "regions"})
        self.guard = verify_guard(config.guards, self.name)

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        cfg = self.config
        self.vlm = self.load_backend(cfg.vlm, VisionLanguageModel, f"{self.name}: vlm")
        self.llm = self.load_backend(cfg.llm, LanguageModel, f"{self.name}: llm")
        self.detector = self.load_backend(cfg.detector, Detector, f"{self.name}: detector")

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
        jobs = self._describe(jobs)
        self._objects(jobs)
        jobs = self._regions(jobs)
        self._describe_regions(jobs)
        self._merge(jobs)
        self._final(jobs)
        return batch

    # --- 1. whole-image captions ------------------------------------------------------------------

    def _describe(self, jobs: list[_Job]) -> list[_Job]:
        cfg = self.config
        requests, owners = [], []
        for job in jobs:
            image = job.sample.image.image
            requests.append(VLMRequest(prompt=self.t_summary.render(), images=[image], params=cfg.summary_params,
                                       tag=f"{job.sample.key}:{cfg.store_as}:summary"))
            owners.append((job, "summary"))
            if not job.caption:
                requests.append(VLMRequest(prompt=self.t_describe.render(), images=[image], params=cfg.caption_params,
                                           tag=f"{job.sample.key}:{cfg.store_as}:caption"))
                owners.append((job, "caption"))
        if not requests:
            return []
        for (job, what), request, gen in zip(owners, requests, self.vlm.generate(requests), strict=True):
            if not gen.ok:
                job.sample.fail(failure_status(gen), f"{self.name}: {what}: {gen.error or 'no text'}")
                continue
            text = clean_caption(gen.texts[0])
            reason = review(self.guard, text, {}, request.prompt, gen.meta, expected_language(self.guard, job.caption, text))
            if reason is not None:
                if what == "caption":
                    job.sample.fail(STAGE_ERROR, f"{self.name}: the global caption was rejected by the guards ({reason}); "
                                    "nothing to fall back to (start from an earlier caption with `caption:`)")
                else:  # no summary: no objects, so the whole image is the main region
                    job.meta["summary_dropped"] = reason
                continue
            setattr(job, what, text)
        return [j for j in jobs if j.sample.ok and j.caption]

    def _objects(self, jobs: list[_Job]) -> None:
        cfg = self.config
        todo = [j for j in jobs if j.summary]
        requests = [chat_request(self.t_objects, {"caption": untrusted(j.summary, "caption", cfg.max_chars)},
                                 cfg.objects_params, f"{j.sample.key}:{cfg.store_as}:objects") for j in todo]
        if not requests:
            return
        parsed = chat_parsed(self.llm, requests, lambda t: parse_items(t, max_items=12, max_words=3),
                             self.t_objects.options.get("retry_note", "Reply only with the list."))
        for job, result in zip(todo, parsed, strict=True):
            if result.transient:  # not a verdict on the image: the sample is redone as a whole
                job.sample.fail(TRANSIENT_ERROR, f"{self.name}: objects: {result.reason}")
                continue
            job.objects = result.value or []
            job.meta["objects"] = {"found": job.objects, "attempts": result.attempts}
            if not result.ok:
                job.meta["objects"].update(failed=result.reason, raw=result.raw)

    # --- 2. regions ------------------------------------------------------------------------------

    def _regions(self, jobs: list[_Job]) -> list[_Job]:
        cfg = self.config
        if not jobs:
            return []
        found = self.detector.detect([j.sample.image.image for j in jobs], [j.objects for j in jobs])
        kept = []
        for job, detections in zip(jobs, found, strict=True):
            if detections.error is not None:
                job.sample.fail(STAGE_ERROR, f"{self.name}: detector: {detections.error}")
                continue
            w, h = job.size
            whole = (0.0, 0.0, float(w), float(h))
            main, matched = geo.main_region([(d.box, d.label, d.score) for d in detections.items], job.objects, w, h,
                                            cfg.box_threshold)
            overlap = geo.iou(main, whole)
            job.meta["main_region"] = {"box": geo.normalised(main, w, h), "iou_with_image": round(overlap, 4),
                                       "matched": matched, "whole_image": main == whole}
            if overlap <= cfg.main_iou_skip:
                job.regions.append(_Region("main", main))
            job.regions += [_Region(name, box) for name, box in zip(geo.QUADRANTS, geo.quadrants(main))]
            for region in job.regions:
                if geo.too_small(region.box, cfg.min_region_px):
                    x0, y0, x1, y1 = geo.pixel_box(region.box)
                    region.skipped = f"crop of {x1 - x0}×{y1 - y0} px is below min_region_px={cfg.min_region_px}"
            kept.append(job)
        return kept

    def _describe_regions(self, jobs: list[_Job]) -> None:
        cfg = self.config
        prompt = self.t_region.render()
        requests, owners = [], []
        for job in jobs:
            for region in job.regions:
                if region.skipped is None:
                    crop = job.sample.image.image.crop(geo.pixel_box(region.box))
                    requests.append(VLMRequest(prompt=prompt, images=[crop], params=cfg.region_params,
                                               tag=f"{job.sample.key}:{cfg.store_as}:{region.name}"))
                    owners.append((job, region))
        if not requests:
            return
        for (job, region), gen in zip(owners, self.vlm.generate(requests), strict=True):
            if not gen.ok:
                if gen.transient:
                    job.sample.fail(TRANSIENT_ERROR, f"{self.name}: region {region.name}: {gen.error}")
                region.skipped = f"no_answer: {gen.error or 'empty'}"
                continue
            text = " ".join(gen.texts[0].split())
            reason = review(self.guard, text, {}, prompt, gen.meta, expected_language(self.guard, job.caption))
            if reason is not None:
                region.skipped = f"guard: {reason}"
                continue
            region.caption = text

    # --- 3. merging neighbours ---------------------------------------------------------------------

    def _merge(self, jobs: list[_Job]) -> None:
        cfg = self.config
        requests, owners = [], []
        for job in jobs:
            w, h = job.size
            quads = job.regions[-4:]
            job.meta["merges"] = []
            paired = set()
            for a, b in geo.ADJACENT:
                first, second = quads[a], quads[b]
                if first.caption is None or second.caption is None:
                    continue
                paired.update((a, b))
                slots = {"first": untrusted(first.caption, "caption", cfg.max_chars),
                         "second": untrusted(second.caption, "caption", cfg.max_chars),
                         "first_box": geo.normalised(first.box, w, h), "second_box": geo.normalised(second.box, w, h)}
                requests.append(chat_request(self.t_merge, slots, cfg.merge_params,
                                             f"{job.sample.key}:{cfg.store_as}:merge:{first.name}+{second.name}"))
                owners.append((job, first, second))
            # A region none of whose neighbours was described keeps its own description.
            for k, region in enumerate(quads):
                if region.caption is not None and k not in paired:
                    job.facts.append(f"{geo.normalised(region.box, w, h)}: {region.caption}")
            main = job.regions[0] if job.regions and job.regions[0].name == "main" else None
            if main is not None and main.caption is not None:
                job.facts.append(f"{geo.normalised(main.box, w, h)}: {main.caption}")
        if not requests:
            return
        parsed = chat_parsed(self.llm, requests, lambda t: parse_sections(t, MERGE_SECTIONS, max_words=40),
                             self.t_merge.options.get("retry_note", "Reply only with the three lists."))
        for (job, first, second), result in zip(owners, parsed, strict=True):
            w, h = job.size
            if result.transient:
                job.sample.fail(TRANSIENT_ERROR, f"{self.name}: merge: {result.reason}")
            record = {"regions": [first.name, second.name], "attempts": result.attempts}
            if not result.ok:
                record.update(failed=result.reason, raw=result.raw)
            else:
                record.update(result.value)
                box = geo.normalised(geo.union([first.box, second.box]), w, h)
                job.facts += [f"{box}: {fact}" for fact in result.value["agree"] + result.value["unique"]]
            job.meta["merges"].append(record)

    # --- 4. the enriched caption -------------------------------------------------------------------

    def _final(self, jobs: list[_Job]) -> None:
        cfg = self.config
        finals = []
        todo = []
        for job in jobs:
            if not job.sample.ok:
                continue
            if not job.facts:
                self._store(job, job.caption, fallback="no_region_facts")
                continue
            slots = {"caption": untrusted(job.caption, "caption", cfg.max_chars),
                     "regions": untrusted(bullet_block(job.facts), "caption", cfg.max_chars)}
            todo.append((job, chat_request(self.t_final, slots, cfg.final_params, f"{job.sample.key}:{cfg.store_as}")))
        if not todo:
            return
        for (job, request), gen in zip(todo, self.llm.chat([r for _, r in todo]), strict=True):
            finals.append(FinalJob(request=request, generation=gen, previous=job.caption, owner=job,
                                   sources={"caption": source_text(job.caption, cfg.max_chars),
                                            "regions": " ".join(job.facts)},
                                   language=expected_language(self.guard, job.caption), sample=job.sample,
                                   meta=job.meta))
        store_captions(self.name, self.guard, self.llm, finals,
                       lambda job, settled: self._store(job, settled.text, settled.fallback, settled.guards))

    def _store(self, job: _Job, text: str, fallback: str | None, guards: dict | None = None) -> None:
        cfg = self.config
        w, h = job.size
        meta = {"input": cfg.caption or "generated", "fallback": fallback, "summary": job.summary, **job.meta,
                "regions": [{"name": r.name, "box": geo.normalised(r.box, w, h), "caption": r.caption,
                             "skipped": r.skipped} for r in job.regions],
                "facts": job.facts}
        if not cfg.caption:
            meta["global_caption"] = job.caption
        if guards:
            meta["guards"] = guards
        job.sample.captions[cfg.store_as] = Caption(
            text=text, source=cfg.store_as, model=self.llm.model_id if fallback is None else None,
            prompt_id=self.t_final.prompt_id, meta=meta)
