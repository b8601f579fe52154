"""Image decoding with hygiene: every image is untrusted input.

The order matters: the header is read first and the pixel count checked before any pixel is
decoded (a 30000×30000 PNG is a few KB on disk and 2.7 GB in memory); then the format is
checked against the allowed list, EXIF orientation applied, the mode normalised to RGB, and the
image shrunk to a bounded size for the model.
"""

from __future__ import annotations

import io
import math
import warnings

from pydantic import Field, PrivateAttr

from capmill.components import Strict
from capmill.errors import ImageDecodeError
from capmill.media.audio import AudioConfig
from capmill.media.video import VideoConfig

_ORIENTATION = 0x0112
ALLOWED_FORMATS = ["JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"]


class ImageConfig(Strict):
    # Refuse images with more pixels than this, read from the header before decoding.
    max_pixels: int = Field(40_000_000, ge=1)
    # PIL format names accepted (MPO is the multi-picture JPEG that phone cameras write).
    formats: list[str] = Field(default_factory=lambda: list(ALLOWED_FORMATS))
    # Longest side after decoding. Captioning models resize to a few hundred pixels anyway; a
    # bound here keeps memory per batch flat. None keeps the original size.
    max_side: int | None = Field(768, ge=16)
    # Decode images at all. Text-only pipelines (fusion, text scoring) can turn this off.
    decode: bool = True
    # The run's `video:` section, attached by the run config so that the decode step, which is
    # handed this object, decodes videos with it too (see `RunConfig`); defaults otherwise.
    _video: VideoConfig | None = PrivateAttr(default=None)
    # The run's `audio:` section, attached the same way.
    _audio: AudioConfig | None = PrivateAttr(default=None)

    @property
    def video(self) -> VideoConfig:
        return self._video if self._video is not None else VideoConfig()

    @property
    def audio(self) -> AudioConfig:
        return self._audio if self._audio is not None else AudioConfig()

    def with_audio(self, audio: AudioConfig) -> ImageConfig:
        """This config with `audio` as the audio settings the decode step uses."""
        self._audio = audio
        return self

    def with_video(self, video: VideoConfig) -> ImageConfig:
        """This config with `video` as the video settings the decode step uses."""
        self._video = video
        return self


def to_rgb(img):
    """`img` as 8-bit RGB: alpha composited over white, palette and 16-bit or float greyscale
    scaled to 8 bits, every other mode converted; an RGB image is returned as is."""
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and float greyscale: scale the actual value range to 8 bits.
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return img


def decode_image(data: bytes, config: ImageConfig):
    """Encoded bytes → an RGB PIL image, or ImageDecodeError with the reason."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; PIL's warning is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image format") from None
    except Image.DecompressionBombError as e:
        # PIL's own guard fires first for sizes far over any sane limit; still only the header was read.
        raise ImageDecodeError(f"image is over the pixel limit (decompression bomb refused): {e}") from None
    except Exception as e:  # PIL raises a wide range of errors on hostile headers
        raise ImageDecodeError(f"unreadable or truncated image: {type(e).__name__}: {e}") from None
    if img.format not in config.formats:
        raise ImageDecodeError(f"format {img.format} not allowed (allowed: {', '.join(config.formats)})")
    width, height = img.size
    check_size(width, height, config)
    try:
        if config.max_side and img.format == "JPEG" and max(width, height) > config.max_side:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the result still covers the final
            # size: far less work than decoding in full and shrinking afterwards.
            scale = config.max_side / max(width, height)
            img.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        return _normalise(img, config)
    except ImageDecodeError:
        raise
    except Exception as e:  # truncated data, bad EXIF, codec errors
        raise ImageDecodeError(f"unreadable or truncated image: {type(e).__name__}: {e}") from None


def check_size(width: int, height: int, config: ImageConfig) -> None:
    """The pixel limit and a non-empty size, read from the header before any pixel is decoded."""
    if width * height > config.max_pixels:
        raise ImageDecodeError(f"image is {width}x{height} = {width * height} pixels, over the pixel limit of {config.max_pixels}")
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image has an empty size {width}x{height}")


def prepare_image(img, config: ImageConfig):
    """An image that is already a PIL object (handed over by the Python API) through the same
    checks and normalisation as decoded bytes: pixel limit, first frame, EXIF orientation, RGB,
    bounded size. The format list does not apply (the caller decoded it). The caller's image is
    never modified."""
    width, height = img.size
    check_size(width, height, config)
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # animated GIF/WebP: the first frame
        return _normalise(img.copy(), config)  # a copy: normalising works in place
    except Exception as e:
        raise ImageDecodeError(f"unusable image: {type(e).__name__}: {e}") from None


def _normalise(img, config: ImageConfig):
    """First frame, loaded, EXIF orientation applied, RGB, longest side at most `max_side`."""
    from PIL import Image, ImageOps

    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)  # animated GIF/WebP: the first frame
    img.load()
    if img.getexif().get(_ORIENTATION, 1) != 1:  # exif_transpose copies even when there is nothing to do
        img = ImageOps.exif_transpose(img)
    img = to_rgb(img)
    if config.max_side and max(img.size) > config.max_side:
        img.thumbnail((config.max_side, config.max_side), Image.Resampling.BICUBIC)
    return img


_MAGIC = [
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
]


def sniff_ext(data: bytes | None) -> str | None:
    """The file extension of encoded image bytes, from their magic number (None if unknown)."""
    if not data:
        return None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    return None


def encode_image(img, fmt: str, quality: int = 90) -> bytes:
    """Re-encode a decoded image (used when the output asks for re-encoding)."""
    buf = io.BytesIO()
    img.save(buf, format=fmt.upper(), quality=quality)
    return buf.getvalue()
