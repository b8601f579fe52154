"""`regions`: a caption for each box of an image, at a target length (FlexCap-style).

FlexCap ("FlexCap: Generating Rich, Localized, and Flexible Captions in Images", Dwibedi et al.,
2024; no public code) trains one model to caption any box at a requested length. capmill emulates
it with any VLM: each box is cropped (with an optional margin of context) and captioned with a
prompt that asks for about `words` words; a caption over the target is cut at a sentence or word
boundary. Boxes come from the input record (`boxes`: a field of the record, or of a webdataset
sample's KEY.json; see `capmill.regions.boxes` for the accepted shapes and units) and from a
`detector` (any `Detector`: a transformers zero-shot model looking for `phrases`, a closed-set
one, OpenCV's HOG person detector; FlexCap proposes its boxes with OWL-ViT), the record's first,
then the detections above `min_score`, best first. A detector that fails on an image makes that
sample a `stage_error` with the reason; the batch goes on.

Every region of the batch goes to the backend in one call; captions pass the output guards and
the rejected ones are asked for again together. The record gets `regions` (a record field, key
`regions` in `capmill.keys`): one entry per box, in the record's order,

    {"box": [x0, y0, x1, y1],   # normalised to the image's width and height
     "caption": "...",          # None when the region was skipped
     "score": 0.93,             # the box's own score (record or detector), else None
     "label": "dog",            # when the record or the detector gives one
     "source": "record",        # or "detector"
     "words": 8, "model": ..., "prompt_id": ...,
     "skipped": "crop 6x9 px is under min_side 16",      # only when skipped
     "flagged": "refusal", "guards": {...}}              # only when the guards still refuse it

Regions are exported for grounding-style training by `capmill export --target grounding`. A box
that cannot be read is left out with its reason in `meta["regions"]["problems"]`; a crop smaller
than `min_side` pixels is kept with `skipped` and no caption.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from capmill import keys
from capmill.backends.base import Detector, Generation, GenerationParams, VisionLanguageModel, VLMRequest
from capmill.components import BackendSpec, StageConfig
from capmill.guards import GuardConfig, Guarded, GuardInput, OutputGuard, finish_reason, settle
from capmill.guards.checks import TRUNCATED
from capmill.guards.guard import FLAGGED
from capmill.keys import Key, StageIO
from capmill.prompts import load_template
from capmill.prompts.safety import without_untrusted
from capmill.regions import Box, crop, parse_boxes
from capmill.sample import BACKEND_ERROR, DECODE_ERROR, STAGE_ERROR, TRANSIENT_ERROR, Sample
from capmill.stages.base import RunContext, Stage
from capmill.text.length import count_words, trim


def _params() -> GenerationParams:
    return GenerationParams(max_new_tokens=48, temperature=0.0)


class RegionsStageConfig(StageConfig):
    type: Literal["regions"] = "regions"
    backend: BackendSpec
    # The record field holding the boxes (the record's own key; for webdataset, KEY.json's); None:
    # boxes from the detector only.
    boxes: str | None = "boxes"
    # Proposes boxes in the decoded image (after the record's): any Detector. None: none.
    detector: BackendSpec | None = None
    # What a zero-shot detector looks for; None: the detector's own default (closed-set
    # detectors report their own labels).
    phrases: list[str] | None = None
    # Detections scoring under this are left out.
    min_score: float = Field(0.1, ge=0, le=1)
    # "normalised" (fractions of width and height) or "pixels" (of the record's width × height,
    # else of the decoded image).
    box_units: Literal["normalised", "pixels"] = "normalised"
    template: str = "flexcap"
    prompt_dirs: list[str] = Field(default_factory=list)
    # Target length of each region caption, in words (FlexCap's length condition).
    words: int = Field(8, ge=1, le=200)
    # Regions captioned per image (the first ones in the record's order).
    max_regions: int = Field(16, ge=1)
    # Crops with a side under this many pixels of the decoded image are skipped with a reason.
    min_side: int = Field(16, ge=1)
    # Context around each box, as a share of its width and height on every side.
    margin: float = Field(0.0, ge=0, le=1)
    params: GenerationParams = Field(default_factory=_params)
    guards: GuardConfig = Field(default_factory=GuardConfig)

    def build(self) -> RegionsStage:
        return RegionsStage(self)

    def io(self, available: frozenset[Key]) -> StageIO:
        return StageIO(reads=[keys.IMAGE], writes=[keys.REGIONS])

    def backend_roles(self) -> dict[str, type]:
        return {"backend": VisionLanguageModel, "detector": Detector}


def record_field(sample: Sample, name: str) -> Any:
    """A field of the input record: the record's own (jsonl, parquet), else its KEY.json's."""
    if name in sample.meta:
        return sample.meta[name]
    nested = sample.meta.get("json")
    return nested.get(name) if isinstance(nested, dict) else None


def record_size(sample: Sample) -> tuple[float, float] | None:
    """The width and height the record states for its image, when it states both."""
    w, h = record_field(sample, "width"), record_field(sample, "height")
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (w, h))
    return (float(w), float(h)) if ok else None


class RegionsStage(Stage):
    config: RegionsStageConfig

    def __init__(self, config: RegionsStageConfig):
        super().__init__(config)
        self.template = load_template("regions", config.template, config.prompt_dirs).check_slots({"word_count"})
        self.guard = OutputGuard(config.guards, stage="regions")

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.backend = self.load_backend(self.config.backend, VisionLanguageModel, "the regions stage")
        self.detector = (self.load_backend(self.config.detector, Detector, "the regions stage's detector")
                         if self.config.detector is not None else None)

    def record_boxes(self, sample: Sample) -> tuple[list[tuple[Box, str]], list[str]]:
        cfg = self.config
        raw = record_field(sample, cfg.boxes) if cfg.boxes else None
        if raw is None:
            return [], []
        width, height = record_size(sample) or sample.image.image.size
        boxes, problems = parse_boxes(raw, width, height, cfg.box_units)
        return [(box, "record") for box in boxes], problems

    def detected_boxes(self, samples: list[Sample]) -> dict[int, list[tuple[Box, str]]]:
        """The detector's boxes of every sample, in one call; a sample it fails on is a stage_error."""
        if self.detector is None or not samples:
            return {}
        cfg = self.config
        images = [s.image.image for s in samples]
        phrases = [list(cfg.phrases) for _ in samples] if cfg.phrases else None
        out: dict[int, list[tuple[Box, str]]] = {}
        for sample, found in zip(samples, self.detector.detect(images, phrases), strict=True):
            if found.error:
                sample.fail(STAGE_ERROR, f"regions: detector: {found.error}")
                continue
            width, height = sample.image.image.size
            kept = sorted((d for d in found.items if d.score >= cfg.min_score), key=lambda d: -d.score)
            boxes, _ = parse_boxes([{"box": list(d.box), "score": d.score, "label": d.label} for d in kept],
                                   width, height, "pixels")
            out[id(sample)] = [(box, "detector") for box in boxes]
        return out

    def process(self, batch: list[Sample]) -> list[Sample]:
        cfg = self.config
        prompt = self.template.render(word_count=cfg.words)
        system = self.template.render_system(word_count=cfg.words)
        given_prompt = without_untrusted(f"{system or ''}\n{prompt}")
        jobs: list[tuple[Sample, dict[str, Any], VLMRequest]] = []
        for sample in batch:
            if sample.image.image is None:
                sample.fail(DECODE_ERROR, "regions needs a decoded image (image.decode is off or decoding failed)")
        live = [s for s in batch if s.ok]
        detected = self.detected_boxes(live)
        for sample in live:
            if not sample.ok:  # the detector failed on it
                continue
            image = sample.image.image
            boxes, problems = self.record_boxes(sample)
            boxes += detected.get(id(sample), [])
            if len(boxes) > cfg.max_regions:
                problems.append(f"{len(boxes) - cfg.max_regions} box(es) over max_regions {cfg.max_regions} left out")
                boxes = boxes[:cfg.max_regions]
            if problems:
                sample.meta.setdefault("regions", {})["problems"] = problems
            sample.regions = []
            for i, (box, source) in enumerate(boxes):
                entry: dict[str, Any] = {"box": box.as_list(), "caption": None, "score": box.score, "source": source}
                if box.label is not None:
                    entry["label"] = box.label
                sample.regions.append(entry)
                x0, y0, x1, y1 = box.pixels(image.width, image.height, cfg.margin)
                if min(x1 - x0, y1 - y0) < cfg.min_side:
                    entry["skipped"] = f"crop {x1 - x0}x{y1 - y0} px is under min_side {cfg.min_side}"
                    continue
                request = VLMRequest(prompt=prompt, system=system, images=[crop(image, box, cfg.margin)],
                                     params=cfg.params, tag=f"{sample.key}:region{i}")
                jobs.append((sample, entry, request))
        if not jobs:
            return batch
        items = []
        for (sample, entry, request), gen in zip(jobs, self.backend.generate([r for _, _, r in jobs]), strict=True):
            if not gen.ok:
                if gen.transient:
                    sample.fail(TRANSIENT_ERROR, f"regions: {gen.error}")
                else:
                    entry["skipped"] = f"{BACKEND_ERROR}: {gen.error or 'no text'}"
                continue
            given = GuardInput(prompt=given_prompt, finish=finish_reason(gen.meta))
            items.append(Guarded(gen.texts[0].strip(), given, owner=(sample, entry, request)))
        failing = settle(self.guard, items, self._regenerate, skip_for=self._skip_for)
        for item in items:
            sample, entry, _ = item.owner
            if sample.status == TRANSIENT_ERROR:
                continue
            self._store(entry, item, item in failing)
        for sample in batch:
            if sample.status == TRANSIENT_ERROR:
                sample.regions = []
        return batch

    def _regenerate(self, items: list[Guarded]) -> list[Generation]:
        requests = []
        for item in items:
            _, _, base = item.owner
            requests.append(VLMRequest(prompt=f"{base.prompt}\n\n{self.guard.retry_note(item.verdict)}", system=base.system,
                                       images=base.images, params=base.params, tag=f"{base.tag}#retry{item.regenerated + 1}"))
        gens = self.backend.generate(requests)
        for item, gen in zip(items, gens, strict=True):
            if not gen.ok and gen.transient:
                item.owner[0].fail(TRANSIENT_ERROR, f"regions: {gen.error}")
        return gens

    def _skip_for(self, item: Guarded) -> frozenset[str]:
        # A caption over its length is cut at a boundary anyway, which also ends a truncated one.
        return frozenset({TRUNCATED}) if count_words(item.text) > self.config.words else frozenset()

    def _store(self, entry: dict[str, Any], item: Guarded, rejected: bool) -> None:
        text = item.text
        if count_words(text) > self.config.words:
            text = trim(text, self.config.words, count_words)
        entry.update(caption=text, words=self.config.words, model=self.backend.model_id,
                     prompt_id=self.template.prompt_id)
        if rejected:
            item.reject()
            entry["flagged"] = item.verdict.reason
            entry["guards"] = item.meta(FLAGGED)
        elif item.meta():
            entry["guards"] = item.meta()
