"""The one record that flows through a run: `Sample`, its `Caption`s and its `MediaRef`.

Outputs that multiply (one per model, per format, per scorer) live in the keyed maps
`captions` and `scores`; a new model never adds a field. A failed sample keeps its row:
`status` says what went wrong and `error` says why.

A sample's media is an image, a video (or a clip of one) or, later, audio: one `MediaRef` whose
`kind` says which, with one slot per decoded form — `image` (a PIL image), `frames` (sampled
video frames with their timestamps) and `audio` (a mono waveform: a video's soundtrack now, audio
samples once they are read). `ImageRef` is the same class under its historical name, and
`Sample.image` the same field as `Sample.media`, so image code reads as it always did.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

OK = "ok"
DECODE_ERROR = "decode_error"
BACKEND_ERROR = "backend_error"
STAGE_ERROR = "stage_error"
READ_ERROR = "read_error"
DROPPED = "dropped"
# A backend failure that may not happen again (server down, timeout, rate limit after every
# retry, truncated answer): the sample is retryable, never a final result.
TRANSIENT_ERROR = "transient_error"
RETRYABLE = frozenset({TRANSIENT_ERROR})

IMAGE, VIDEO, AUDIO = "image", "video", "audio"


@dataclass(slots=True)
class Caption:
    text: str
    source: str  # the key it is stored under: "alt_text", "ssc", "dsc", "capsfusion", ...
    model: str | None = None  # model id that wrote it; None for the AltText
    prompt_id: str | None = None  # template name + version, e.g. "dsc@1"
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "source": self.source,
            "model": self.model,
            "prompt_id": self.prompt_id,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Caption:
        return cls(
            text=d["text"],
            source=d["source"],
            model=d.get("model"),
            prompt_id=d.get("prompt_id"),
            meta=dict(d.get("meta") or {}),
        )


@dataclass(slots=True)
class Frame:
    """One decoded video frame: `t` is its presentation time in seconds from the start of the
    sample's window (0 = the clip's start for a clip, the video's start otherwise)."""

    t: float
    image: Image.Image


@dataclass(slots=True)
class Waveform:
    """Decoded audio: mono float32 samples in [-1, 1] at `rate` Hz, starting `start` seconds into
    the sample's window. Where audio samples (and a video's soundtrack) are kept once decoded."""

    samples: np.ndarray
    rate: int
    start: float = 0.0

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate if self.rate else 0.0


@dataclass(slots=True)
class Clip:
    """The window of a longer video that a clip sample covers, and the video it came from.

    `start`/`end` are seconds in the source video. A clip's own bytes (when a reader cut them)
    begin at the keyframe at or before `start`, `offset` seconds into the source, so frames of
    the clip are taken from `start - offset` on within those bytes.
    """

    source: str  # key of the source video
    index: int  # position among the source's clips
    start: float
    end: float
    offset: float = 0.0
    source_path: str | None = None  # where the source was read from, when it was a file or URL

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "index": self.index, "start": round(self.start, 6),
                             "end": round(self.end, 6), "offset": round(self.offset, 6)}
        if self.source_path is not None:
            d["source_path"] = self.source_path
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Clip:
        return cls(source=d["source"], index=int(d["index"]), start=float(d["start"]), end=float(d["end"]),
                   offset=float(d.get("offset", 0.0)), source_path=d.get("source_path"))


@dataclass(slots=True)
class MediaRef:
    """Where the media is, what kind it is, and its decoded forms once something needed them.

    `data` holds the encoded bytes exactly as read (they are what a writer stores, so the
    original file survives untouched); `path` or `url` say where to fetch them when a reader
    defers reading. The decoded slots are set by the decode step and never serialised, except
    the timestamps of the sampled frames (`frame_times` in the record), which say what a model
    saw: `image` for an image, `frames` for a video, `audio` for a waveform.
    """

    data: bytes | None = None
    path: str | None = None
    url: str | None = None
    ext: str | None = None  # lower-case extension without the dot: "jpg", "png", "mp4", ...
    image: Image.Image | None = None
    kind: str = IMAGE
    frames: list[Frame] | None = None
    audio: Waveform | None = None
    clip: Clip | None = None
    # The sampled frames' timestamps when the frames themselves are not here (a record read back).
    frame_times: list[float] | None = None

    def read_bytes(self) -> bytes:
        """The encoded bytes, reading them from `path`/`url` on first use (then cached)."""
        if self.data is None:
            location = self.path or self.url
            if location is None:
                raise ValueError(f"{self.kind} reference has neither bytes, path nor url")
            from capmill.fetch import fetch, is_url

            if is_url(location):
                # Untrusted URLs go through the guarded fetcher (address rules, caps, timeouts).
                self.data = fetch(location)
            else:
                import fsspec

                with fsspec.open(location, "rb") as f:
                    self.data = f.read()
        return self.data

    @property
    def times(self) -> list[float]:
        """Timestamps of the sampled frames (decoded or as recorded); [] when none were sampled."""
        if self.frames is not None:
            return [f.t for f in self.frames]
        return list(self.frame_times or [])

    def release(self) -> None:
        """Drop every decoded form (pixels, frames, waveform); the timestamps stay recorded."""
        if self.frames is not None:
            self.frame_times = [f.t for f in self.frames]
        self.image = None
        self.frames = None
        self.audio = None

    def to_dict(self, include_bytes: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "url": self.url, "ext": self.ext}
        if self.kind != IMAGE:
            d["kind"] = self.kind
        if self.clip is not None:
            d["clip"] = self.clip.to_dict()
        times = self.times
        if times:
            d["frame_times"] = [round(t, 6) for t in times]
        if include_bytes and self.data is not None:
            d["data_b64"] = base64.b64encode(self.data).decode("ascii")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> MediaRef:
        d = d or {}
        data = base64.b64decode(d["data_b64"]) if d.get("data_b64") is not None else None
        clip = Clip.from_dict(d["clip"]) if isinstance(d.get("clip"), dict) else None
        times = d.get("frame_times")
        return cls(data=data, path=d.get("path"), url=d.get("url"), ext=d.get("ext"), kind=d.get("kind") or IMAGE,
                   clip=clip, frame_times=[float(t) for t in times] if isinstance(times, list) else None)


# The historical name: every image-only caller keeps working.
ImageRef = MediaRef


@dataclass(slots=True)
class Sample:
    key: str  # identity; survives every stage; unique within a run
    image: MediaRef = field(default_factory=MediaRef)  # the media of any kind; also `Sample.media`
    alt_text: str | None = None  # never overwritten
    captions: dict[str, Caption] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    status: str = OK
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # Region captions (`regions` stage, FlexCap-style): one dict per box, {"box": [x0, y0, x1, y1]
    # normalised to the image's width and height, "caption": str | None, "score": float | None,
    # ...}; left out of the record while empty.
    regions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def media(self) -> MediaRef:
        """The sample's media (image, video or audio): the same object as `image`."""
        return self.image

    @media.setter
    def media(self, ref: MediaRef) -> None:
        self.image = ref

    @property
    def kind(self) -> str:
        return self.image.kind

    def fail(self, status: str, error: str) -> None:
        """Mark the sample failed; the first failure wins so the root cause is what is kept."""
        if self.status == OK:
            self.status = status
            self.error = error

    def text(self, field_name: str) -> str | None:
        """The text of a caption field; `alt_text` names the AltText."""
        if field_name == "alt_text":
            return self.alt_text
        caption = self.captions.get(field_name)
        return caption.text if caption is not None else None

    def to_dict(self, include_image_bytes: bool = False) -> dict[str, Any]:
        out = {
            "key": self.key,
            "alt_text": self.alt_text,
            "captions": {name: c.to_dict() for name, c in self.captions.items()},
            "scores": dict(self.scores),
            "status": self.status,
            "error": self.error,
            "meta": self.meta,
            # Images keep the historical "image" key; videos and audio are written as "media".
            ("image" if self.image.kind == IMAGE else "media"): self.image.to_dict(include_bytes=include_image_bytes),
        }
        if self.regions:
            out["regions"] = self.regions
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sample:
        """A record, or a row of a capmill output (a tar's `KEY.json`, a parquet row), whose
        full record is the JSON string under `record`."""
        if isinstance(d.get("record"), str) and "captions" not in d:
            return cls.from_json(d["record"])
        return cls(
            key=d["key"],
            image=MediaRef.from_dict(d.get("media") if d.get("media") is not None else d.get("image")),
            alt_text=d.get("alt_text"),
            captions={k: Caption.from_dict(v) for k, v in (d.get("captions") or {}).items()},
            scores={k: float(v) for k, v in (d.get("scores") or {}).items()},
            status=d.get("status", OK),
            error=d.get("error"),
            meta=dict(d.get("meta") or {}),
            regions=list(d.get("regions") or []),
        )

    def to_json(self, include_image_bytes: bool = False) -> str:
        # allow_nan keeps NaN scores representable (Python's json writes NaN); ensure_ascii=False
        # keeps non-Latin AltText readable in the shards.
        return json.dumps(self.to_dict(include_image_bytes), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Sample:
        return cls.from_dict(json.loads(text))


def field_texts(sample: Sample, fields: list[str] | None) -> dict[str, str]:
    """field → text to score: the listed fields, or the AltText and every caption. Fields
    without text are left out."""
    names = fields if fields is not None else ["alt_text", *sample.captions]
    out = {}
    for name in names:
        text = sample.text(name)
        if text is not None and text.strip():
            out[name] = text
    return out


def numbered_captions(sample: Sample, prefix: str) -> list[str]:
    """The caption names `PREFIX.0`, `PREFIX.1`, … the sample holds, in index order."""
    found = []
    for name in sample.captions:
        head, dot, index = name.rpartition(".")
        if dot and head == prefix and index.isdigit():
            found.append((int(index), name))
    return [name for _, name in sorted(found)]


def candidate_texts(sample: Sample, spec: str | list[str]) -> list[tuple[str, str]]:
    """(name, text) of the candidates that can compete, in order: the captions `PREFIX.i` when
    `spec` is a prefix, else the named texts (`alt_text` is the AltText); each present, non-empty
    and not flagged by the output guards (`meta["flagged"]`)."""
    names = numbered_captions(sample, spec) if isinstance(spec, str) else list(spec)
    out = []
    for name in names:
        if name == "alt_text":
            text = (sample.alt_text or "").strip()
        else:
            caption = sample.captions.get(name)
            text = caption.text.strip() if caption is not None and not caption.meta.get("flagged") else ""
        if text:
            out.append((name, text))
    return out
