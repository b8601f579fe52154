"""Which moments of a video to look at: the pure part of frame and clip sampling.

Everything here maps numbers to numbers (a window, a frame rate, keyframe or scene-cut times →
timestamps or clip windows), so each rule is unit-tested without a video. The decoder then seeks
to these timestamps; see `capmill.media.video`.

- `uniform`: N frames at the centres of N equal parts of the window (the first and last frames
  of a video are often black or a title card; centres avoid them).
- `fps`: one frame every 1/fps seconds, from half a period in.
- `keyframes`: the encoder's keyframes (I-frames), the cheapest frames to decode.
- `scenes`: `per_scene` frames in each scene between detected cuts (PySceneDetect's adaptive
  detector, see `capmill.media.scenes`).

Every mode is capped at `max_frames`; a longer list is thinned evenly, first and last kept.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from capmill.components import Strict


class SceneConfig(Strict):
    """PySceneDetect's AdaptiveDetector: a cut is a frame whose content change is `threshold`
    times the average change of its neighbours (and at least `min_content`). Detection runs on
    frames shrunk to `analysis_side` pixels, which finds the same hard cuts many times faster."""

    threshold: float = Field(3.0, gt=0)
    min_content: float = Field(15.0, ge=0)
    # Frames on each side of a frame that make up its neighbourhood.
    window: int = Field(2, ge=1)
    # Shortest scene; cuts closer together are ignored.
    min_scene_seconds: float = Field(0.5, ge=0)
    analysis_side: int = Field(128, ge=16)


class SamplingConfig(Strict):
    mode: Literal["uniform", "fps", "keyframes", "scenes"] = "uniform"
    # uniform: frames per sample (video models are trained on 8–32; 8 keeps CPUs usable).
    frames: int = Field(8, ge=1)
    # fps: frames per second of video.
    fps: float = Field(1.0, gt=0)
    # scenes: frames taken in each scene.
    per_scene: int = Field(1, ge=1)
    # Cap on the frames of any mode: memory per sample is about max_frames × max_side² × 3 bytes.
    max_frames: int = Field(32, ge=1)
    scene: SceneConfig = Field(default_factory=SceneConfig)


def thin(times: list[float], limit: int) -> list[float]:
    """At most `limit` of `times`, evenly spread, the first and the last kept."""
    if len(times) <= limit:
        return list(times)
    if limit == 1:
        return [times[len(times) // 2]]
    step = (len(times) - 1) / (limit - 1)
    return [times[round(i * step)] for i in range(limit)]


def uniform_times(start: float, end: float, n: int) -> list[float]:
    """The centres of `n` equal parts of [start, end)."""
    span = max(end - start, 0.0)
    return [start + (i + 0.5) * span / n for i in range(n)]


def fps_times(start: float, end: float, fps: float, limit: int) -> list[float]:
    """One timestamp per 1/fps seconds of [start, end), half a period in; capped at `limit` by
    spreading `limit` frames uniformly instead (the same coverage, fewer frames)."""
    period = 1.0 / fps
    count = max(1, math.floor(max(end - start, 0.0) * fps + 1e-9))
    if count > limit:
        return uniform_times(start, end, limit)
    return [start + (i + 0.5) * period for i in range(count)]


def in_window(times: list[float], start: float, end: float) -> list[float]:
    return [t for t in times if start - 1e-6 <= t < end]


def keyframe_times(keyframes: list[float], start: float, end: float, limit: int) -> list[float]:
    """The keyframes inside [start, end), thinned to `limit`; the window's centre when it holds none."""
    inside = in_window(sorted(keyframes), start, end)
    return thin(inside, limit) if inside else uniform_times(start, end, 1)


def scenes_of(cuts: list[float], start: float, end: float) -> list[tuple[float, float]]:
    """[start, end) split at the cuts that fall strictly inside it."""
    edges = [start, *(c for c in sorted(cuts) if start < c < end), end]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def scene_times(cuts: list[float], start: float, end: float, per_scene: int, limit: int) -> list[float]:
    """`per_scene` frames at the centres of equal parts of each scene, thinned to `limit`."""
    times = [t for a, b in scenes_of(cuts, start, end) for t in uniform_times(a, b, per_scene)]
    return thin(times, limit)


def sample_times(config: SamplingConfig, start: float, end: float, keyframes: list[float] | None = None,
                 cuts: list[float] | None = None) -> list[float]:
    """The timestamps `config` asks for in the window [start, end). `keyframes` and `cuts` are
    needed by their modes only."""
    if config.mode == "uniform":
        return uniform_times(start, end, min(config.frames, config.max_frames))
    if config.mode == "fps":
        return fps_times(start, end, config.fps, config.max_frames)
    if config.mode == "keyframes":
        return keyframe_times(keyframes or [], start, end, config.max_frames)
    return scene_times(cuts or [], start, end, config.per_scene, config.max_frames)


def clip_windows(duration: float, length: float, min_length: float, *, cuts: list[float] | None = None,
                 keyframes: list[float] | None = None, snap: float = 0.0, limit: int | None = None) -> list[tuple[float, float]]:
    """A video of `duration` seconds as clip windows [start, end).

    Without `cuts`: consecutive windows of `length` seconds. With `cuts`: one window per scene,
    scenes longer than `length` cut into equal parts no longer than it. With `keyframes` and
    `snap` > 0, each boundary moves to the nearest keyframe within `snap` seconds, so clips cut
    from the stream without re-encoding start exactly where they say. A last window shorter
    than `min_length` joins the one before it; so does any scene shorter than it. At most
    `limit` windows (the rest of the video is left out, never merged into one huge clip).
    """
    if duration <= 0:
        return []
    if cuts is None:
        edges = [min(i * length, duration) for i in range(math.ceil(duration / length - 1e-9) + 1)]
    else:
        edges = [0.0]
        for a, b in scenes_of(cuts, 0.0, duration):
            parts = max(1, math.ceil((b - a) / length - 1e-9))
            edges.extend(a + (b - a) * (i + 1) / parts for i in range(parts))
    edges[-1] = duration
    if keyframes and snap > 0:
        ordered = sorted(keyframes)
        for i in range(1, len(edges) - 1):
            nearest = min(ordered, key=lambda k: abs(k - edges[i]))
            if abs(nearest - edges[i]) <= snap and edges[i - 1] < nearest < edges[i + 1]:
                edges[i] = nearest
    windows = [(a, b) for a, b in zip(edges, edges[1:]) if b > a]
    merged: list[tuple[float, float]] = []
    for a, b in windows:
        if merged and b - a < min_length:
            merged[-1] = (merged[-1][0], b)
        elif merged and merged[-1][1] - merged[-1][0] < min_length:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged[:limit] if limit is not None else merged
