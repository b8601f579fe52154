"""The one record that flows through a run: `Sample`, its `Caption`s and its `ImageRef`.

Outputs that multiply (one per model, per format, per scorer) live in the keyed maps
`captions` and `scores`; a new model never adds a field. A failed sample keeps its row:
`status` says what went wrong and `error` says why.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
class ImageRef:
    """Where the image is, and the image itself once something needed it.

    `data` holds the encoded bytes exactly as read (they are what a writer stores, so the
    original file survives untouched); `path` or `url` say where to fetch them when a reader
    defers reading. `image` is the decoded, normalised PIL image, set once by the decode step
    and never serialised.
    """

    data: bytes | None = None
    path: str | None = None
    url: str | None = None
    ext: str | None = None  # lower-case extension without the dot: "jpg", "png", ...
    image: Image.Image | None = None

    def read_bytes(self) -> bytes:
        """The encoded bytes, reading them from `path`/`url` on first use (then cached)."""
        if self.data is None:
            location = self.path or self.url
            if location is None:
                raise ValueError("image reference has neither bytes, path nor url")
            from capmill.fetch import fetch, is_url

            if is_url(location):
                # Untrusted URLs go through the guarded fetcher (address rules, caps, timeouts).
                self.data = fetch(location)
            else:
                import fsspec

                with fsspec.open(location, "rb") as f:
                    self.data = f.read()
        return self.data

    def to_dict(self, include_bytes: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "url": self.url, "ext": self.ext}
        if include_bytes and self.data is not None:
            d["data_b64"] = base64.b64encode(self.data).decode("ascii")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ImageRef:
        d = d or {}
        data = base64.b64decode(d["data_b64"]) if d.get("data_b64") is not None else None
        return cls(data=data, path=d.get("path"), url=d.get("url"), ext=d.get("ext"))


@dataclass(slots=True)
class Sample:
    key: str  # identity; survives every stage; unique within a run
    image: ImageRef = field(default_factory=ImageRef)
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
            "image": self.image.to_dict(include_bytes=include_image_bytes),
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
            image=ImageRef.from_dict(d.get("image")),
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
