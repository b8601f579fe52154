"""Object detectors (Detector): transformers zero-shot and closed-set models, and OpenCV's HOG
person detector.

`type: hf_detector` loads any transformers detection checkpoint:
- zero-shot (open vocabulary) — OWL-ViT, OWLv2, Grounding DINO (`AutoModelForZeroShotObjectDetection`):
  each image is searched for the phrases the stage hands over (the objects a caption names), or
  for `phrases` from the config when the stage gives none;
- closed set — DETR, Conditional/Deformable DETR, RT-DETR, YOLOS (`AutoModelForObjectDetection`):
  the model reports its own labels (COCO's for the usual checkpoints) and phrases are ignored.
Which one a model is comes from its config (`mode: auto`) or is named.

`type: opencv_hog` is OpenCV's built-in HOG + linear SVM pedestrian detector: real, fast, no
download, one label ("person"). It is what tests and CPU-only runs use where no detection
weights are at hand.

    detector: {type: hf_detector, model: google/owlv2-base-patch16-ensemble}
    detector: {type: hf_detector, model: facebook/detr-resnet-50, threshold: 0.5}
    detector: {type: opencv_hog}

Boxes come back in pixels of the image handed over, clipped to it. An image the model fails on
gets its own `Detections.error`; the rest of the batch is detected as usual.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from capmill.backends.availability import resolve_model
from capmill.backends.base import Detection, Detections
from capmill.backends.common import import_torch_stack, pick_device, pick_dtype
from capmill.components import BackendConfig
from capmill.errors import ConfigError, SetupError
from capmill.media.image import to_rgb

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

ZERO_SHOT_TYPES = frozenset({"owlvit", "owlv2", "grounding-dino", "mm-grounding-dino"})
GROUNDING_TYPES = frozenset({"grounding-dino", "mm-grounding-dino"})
IMAGE_ERRORS = (ValueError, RuntimeError, TypeError, IndexError)
# Phrases a zero-shot detector looks for when the stage gives none: common things in web photos.
COMMON_OBJECTS = ["person", "dog", "cat", "car", "bicycle", "bird", "horse", "chair", "table", "cup", "bottle",
                  "book", "tree", "building", "sign", "boat", "food", "flower"]


def _clip_box(box: Any, width: int, height: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return (min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height))


class HFDetectorConfig(BackendConfig):
    type: Literal["hf_detector"] = "hf_detector"
    # Hub id or local folder of a transformers detection model.
    model: str
    revision: str | None = None
    # zero_shot: looks for given phrases; closed_set: reports its own labels; auto: from the model.
    mode: Literal["auto", "zero_shot", "closed_set"] = "auto"
    # Detections below this score are not returned (stages apply their own, usually higher, bar).
    threshold: float = Field(0.1, ge=0, le=1)
    # Grounding DINO: how strongly a text token must match for its words to name a box.
    text_threshold: float = Field(0.25, ge=0, le=1)
    # Zero-shot phrases used when a request gives none.
    phrases: list[str] = Field(default_factory=lambda: list(COMMON_OBJECTS))
    # Most detections kept per image (highest scores).
    max_detections: int = Field(50, ge=1)
    batch_size: int = Field(8, ge=1)
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    trust_remote_code: bool = False

    def build(self) -> HFDetector:
        return HFDetector(self)

    def model_ids(self) -> list[str]:
        return [self.model]


class HFDetector:
    """Implements Detector with a transformers detection model."""

    def __init__(self, config: HFDetectorConfig):
        self.config = config
        self.model_id = config.model
        self.model: Any = None
        self.processor: Any = None
        self.zero_shot = False
        self.model_type = ""

    def load(self) -> None:
        if self.model is not None:
            return
        import_torch_stack()
        from transformers import (
            AutoConfig,
            AutoImageProcessor,
            AutoModelForObjectDetection,
            AutoModelForZeroShotObjectDetection,
            AutoProcessor,
        )

        cfg = self.config
        path = resolve_model(cfg.model, cfg.revision)
        shared = {"trust_remote_code": cfg.trust_remote_code}
        try:
            hf_config = AutoConfig.from_pretrained(path, **shared)
        except (OSError, ValueError) as e:
            raise SetupError(f"detector {cfg.model!r}: no usable config.json in {path} ({e})") from e
        self.model_type = hf_config.model_type
        self.zero_shot = cfg.mode == "zero_shot" or (cfg.mode == "auto" and self.model_type in ZERO_SHOT_TYPES)
        try:
            if self.zero_shot:
                self.processor = AutoProcessor.from_pretrained(path, **shared)
                model = AutoModelForZeroShotObjectDetection.from_pretrained(path, **shared)
            else:
                self.processor = AutoImageProcessor.from_pretrained(path, **shared)
                model = AutoModelForObjectDetection.from_pretrained(path, **shared)
        except (OSError, ValueError) as e:
            kind = "zero-shot" if self.zero_shot else "closed-set"
            raise SetupError(f"detector {cfg.model!r} could not be loaded as a {kind} detection model ({e}); "
                             "set mode if the model is of the other kind") from e
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        self.model = model.to(self.device, dtype=self.dtype).eval()

    def close(self) -> None:
        self.model = self.processor = None

    def detect(self, images: list[Image.Image], phrases: list[list[str]] | None = None) -> list[Detections]:
        if self.model is None:
            raise SetupError(f"detector {self.model_id!r} used before load()")
        if phrases is not None and len(phrases) != len(images):
            raise ConfigError(f"detect: {len(images)} images but {len(phrases)} phrase lists")
        rgb = [to_rgb(im) for im in images]
        wanted = [list(dict.fromkeys(p for p in ((phrases[i] if phrases else None) or self.config.phrases) if p.strip()))
                  for i in range(len(images))]
        out: list[Detections | None] = [None] * len(images)
        size = self.config.batch_size
        for start in range(0, len(images), size):
            chunk = list(range(start, min(start + size, len(images))))
            self._chunk(rgb, wanted, chunk, out)
        return out  # type: ignore[return-value]

    def _chunk(self, images, wanted, chunk, out) -> None:
        try:
            for i, found in zip(chunk, self._run([images[i] for i in chunk], [wanted[i] for i in chunk]), strict=True):
                out[i] = found
        except IMAGE_ERRORS as e:
            if len(chunk) > 1:
                for i in chunk:
                    self._chunk(images, wanted, [i], out)
            else:
                log.warning("%s failed on an image: %s", self.model_id, e)
                out[chunk[0]] = Detections(error=f"{type(e).__name__}: {e}", meta={"backend": "hf_detector"})

    def _run(self, images: list[Image.Image], phrases: list[list[str]]) -> list[Detections]:
        import torch

        sizes = [(im.height, im.width) for im in images]
        if self.zero_shot and self.model_type in GROUNDING_TYPES:
            text = [". ".join(p) + "." for p in phrases]
            inputs = self.processor(images=images, text=text, return_tensors="pt", padding=True)
        elif self.zero_shot:
            inputs = self.processor(images=images, text=phrases, return_tensors="pt")
        else:
            inputs = self.processor(images=images, return_tensors="pt")
        inputs = {k: (v.to(self.device, dtype=self.dtype) if v.is_floating_point() else v.to(self.device))
                  if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        with torch.inference_mode():
            outputs = self.model(**inputs)
        outputs = _to_float32_cpu(outputs)
        cfg = self.config
        if self.zero_shot and self.model_type in GROUNDING_TYPES:
            results = self.processor.post_process_grounded_object_detection(
                outputs, input_ids=inputs["input_ids"].cpu(), threshold=cfg.threshold, text_threshold=cfg.text_threshold,
                target_sizes=sizes)
            labels = [list(r.get("text_labels") or r["labels"]) for r in results]
        elif self.zero_shot:
            # OWLv2 pads images to a square before resizing, so its boxes are relative to the
            # padded square; OWL-ViT resizes without padding.
            targets = [(max(h, w), max(h, w)) for h, w in sizes] if self.model_type == "owlv2" else sizes
            results = self.processor.post_process_grounded_object_detection(
                outputs, threshold=cfg.threshold, target_sizes=targets, text_labels=phrases)
            labels = [list(r["text_labels"]) for r in results]
        else:
            results = self.processor.post_process_object_detection(outputs, threshold=cfg.threshold, target_sizes=sizes)
            id2label = self.model.config.id2label
            labels = [[id2label.get(int(i), str(int(i))) for i in r["labels"]] for r in results]
        found = []
        for (h, w), result, names in zip(sizes, results, labels, strict=True):
            items = [Detection(box=_clip_box(box.tolist(), w, h), label=str(name), score=round(float(score), 4))
                     for box, score, name in zip(result["boxes"], result["scores"], names)]
            items.sort(key=lambda d: (-d.score, d.label, d.box))
            found.append(Detections(items=items[: cfg.max_detections], meta={"backend": "hf_detector"}))
        return found


def _to_float32_cpu(outputs: Any) -> Any:
    """Post-processing sigmoid/softmax in float32 on the CPU, whatever the model ran in."""
    import torch

    for key, value in list(outputs.items()):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            outputs[key] = value.float().cpu()
    return outputs


class HogPersonConfig(BackendConfig):
    type: Literal["opencv_hog"] = "opencv_hog"
    # SVM margin a window needs to count as a person (OpenCV's hitThreshold); scores are the margin
    # squashed into (0, 1).
    hit_threshold: float = 0.0
    # Sliding-window stride and pyramid scale step: smaller finds more, slower.
    win_stride: int = Field(8, ge=1)
    scale: float = Field(1.05, gt=1)
    # Images are scaled so their longer side is at most this before detection (boxes are mapped back).
    max_side: int = Field(640, ge=64)

    def build(self) -> HogPersonDetector:
        return HogPersonDetector(self)

    def model_ids(self) -> list[str]:
        return ["opencv:hog-people"]


class HogPersonDetector:
    """Implements Detector with OpenCV's default people detector (one label, "person"). Phrases
    are ignored: it finds people or nothing."""

    def __init__(self, config: HogPersonConfig):
        self.config = config
        self.model_id = "opencv:hog-people"
        self.hog: Any = None

    def load(self) -> None:
        try:
            import cv2
        except ImportError:
            raise SetupError("the opencv_hog detector needs OpenCV: `pip install 'capmill[ocr]'` "
                             "(opencv-python)") from None
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def close(self) -> None:
        self.hog = None

    def detect(self, images: list[Image.Image], phrases: list[list[str]] | None = None) -> list[Detections]:
        import math

        import cv2
        import numpy as np

        if self.hog is None:
            raise SetupError("the opencv_hog detector is not loaded: call load() first")
        cfg = self.config
        out = []
        for image in images:
            try:
                rgb = to_rgb(image)
                factor = min(1.0, cfg.max_side / max(rgb.size))
                if factor < 1.0:
                    rgb = rgb.resize((max(1, round(rgb.width * factor)), max(1, round(rgb.height * factor))))
                gray = cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2GRAY)
                if gray.shape[0] < 128 or gray.shape[1] < 64:  # smaller than one detection window
                    out.append(Detections(meta={"backend": "opencv_hog", "note": "image smaller than the 64×128 window"}))
                    continue
                rects, weights = self.hog.detectMultiScale(gray, hitThreshold=cfg.hit_threshold,
                                                           winStride=(cfg.win_stride, cfg.win_stride), scale=cfg.scale)
                items = []
                for (x, y, w, h), margin in zip(rects, np.ravel(weights) if len(rects) else []):
                    box = (x / factor, y / factor, (x + w) / factor, (y + h) / factor)
                    items.append(Detection(box=_clip_box(box, image.width, image.height), label="person",
                                           score=round(1 / (1 + math.exp(-float(margin))), 4)))
                items.sort(key=lambda d: (-d.score, d.box))
                out.append(Detections(items=items, meta={"backend": "opencv_hog"}))
            except (cv2.error, ValueError) as e:
                out.append(Detections(error=f"opencv_hog: {type(e).__name__}: {e}"))
        return out
