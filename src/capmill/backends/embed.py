"""Embedding a sample's media with any MediaTextScorer: images, videos and audio in one call each.

A scorer embeds the media kinds it has a method for (`embed_images`: images, and videos as the
normalised mean of their sampled frames, the usual video CLIPScore; `embed_audio`: audio).
`embed_media` gives one row per sample, batched per kind (one scorer call for the batch's
images, one for every frame of its videos, one for its audio), and NaN rows with a reason where
the scorer cannot embed a sample's kind or its media is not decoded, so a stage fails just those
samples and scores the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from capmill.sample import AUDIO, IMAGE, VIDEO

if TYPE_CHECKING:
    import numpy as np

    from capmill.sample import MediaRef


def scorer_kinds(scorer: Any) -> set[str]:
    """The media kinds `scorer` embeds."""
    kinds = set()
    if callable(getattr(scorer, "embed_images", None)):
        kinds |= {IMAGE, VIDEO}
    if callable(getattr(scorer, "embed_audio", None)):
        kinds.add(AUDIO)
    return kinds


def config_kinds(config: Any) -> set[str] | None:
    """The media kinds a scorer's config embeds, when its class says (`media_kinds`); None when
    it does not (known once the backend is built)."""
    kinds = getattr(config, "media_kinds", None)
    return set(kinds) if kinds is not None else None


def why_not(ref: MediaRef, kinds: set[str], model_id: str) -> str | None:
    """Why a sample's media cannot be embedded (None when it can)."""
    if ref.kind not in kinds:
        return f"the scorer {model_id} embeds no {ref.kind} (it embeds {', '.join(sorted(kinds)) or 'nothing'})"
    if ref.kind == IMAGE and ref.image is None:
        return "needs a decoded image (image.decode is off or decoding failed)"
    if ref.kind == VIDEO and not ref.frames:
        return "needs the video's sampled frames (video.decode is off or decoding failed)"
    if ref.kind == AUDIO and ref.audio is None:
        return "needs the decoded audio (audio.decode is off or decoding failed)"
    return None


def embed_media(scorer: Any, refs: list[MediaRef]) -> tuple[np.ndarray, list[str | None]]:
    """(rows, reasons): one embedding row per ref (NaN where it could not be embedded) and, per
    ref, None or why it could not."""
    import numpy as np

    from capmill.metrics.embedding import unit_rows

    kinds = scorer_kinds(scorer)
    reasons = [why_not(ref, kinds, scorer.model_id) for ref in refs]
    rows: list[Any] = [None] * len(refs)
    images = [i for i, ref in enumerate(refs) if reasons[i] is None and ref.kind == IMAGE]
    videos = [i for i, ref in enumerate(refs) if reasons[i] is None and ref.kind == VIDEO]
    audio = [i for i, ref in enumerate(refs) if reasons[i] is None and ref.kind == AUDIO]
    if images:
        for i, row in zip(images, unit_rows(scorer.embed_images([refs[i].image for i in images])), strict=True):
            rows[i] = row
    if videos:
        frames = [f.image for i in videos for f in refs[i].frames]
        emb = unit_rows(scorer.embed_images(frames))
        at = 0
        for i in videos:
            n = len(refs[i].frames)
            mean = emb[at:at + n].mean(axis=0)
            rows[i] = mean / (np.linalg.norm(mean) or 1.0)
            at += n
    if audio:
        for i, row in zip(audio, unit_rows(scorer.embed_audio([refs[i].audio for i in audio])), strict=True):
            rows[i] = row
    dim = next((len(r) for r in rows if r is not None), 1)
    out = np.full((len(refs), dim), np.nan)
    for i, row in enumerate(rows):
        if row is not None:
            out[i] = row
    return out, reasons
