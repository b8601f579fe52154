"""Aligning timestamped captions to the video moments they describe.

HowToCaption (Shvetsova et al., ECCV 2024) moves each caption produced from narration to the
clip that matches it best: around the caption's time (± `offset` seconds) every window of
`clip_seconds` is a candidate, a window's embedding is the mean of its frames' embeddings, and
the caption keeps the window with the highest cosine similarity to its text embedding. A
caption whose best similarity is under a threshold is dropped (narration often talks about
things not on screen). Pure numpy: embeddings in, windows and scores out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class Aligned:
    start: float
    end: float
    score: float


def window_embedding(frame_times: np.ndarray, frame_embs: np.ndarray, start: float, end: float) -> np.ndarray:
    """Unit mean of the embeddings of frames in [start, end); the nearest frame when none is."""
    inside = (frame_times >= start) & (frame_times < end)
    if not inside.any():
        inside = np.zeros(len(frame_times), bool)
        inside[int(np.argmin(np.abs(frame_times - (start + end) / 2)))] = True
    mean = frame_embs[inside].mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 0 else mean


def align(caption_times: list[float], text_embs: np.ndarray, frame_times: list[float], frame_embs: np.ndarray,
          duration: float, clip_seconds: float, offset: float, step: float = 1.0) -> list[Aligned]:
    """The best window of `clip_seconds` within ± `offset` s of each caption's time (windows
    kept inside [0, duration]), and its similarity."""
    times = np.asarray(frame_times, dtype=np.float64)
    embs = np.asarray(frame_embs, dtype=np.float64)
    half = clip_seconds / 2
    out = []
    for t, text in zip(caption_times, np.asarray(text_embs, dtype=np.float64), strict=True):
        lo = max(half, t - offset) if duration > clip_seconds else duration / 2
        hi = min(duration - half, t + offset) if duration > clip_seconds else duration / 2
        centres = np.arange(lo, max(lo, hi) + 1e-9, step) if hi >= lo else np.array([min(max(t, half), duration - half)])
        best: Aligned | None = None
        for c in centres:
            start, end = max(0.0, c - half), min(duration, c + half)
            score = float(np.dot(window_embedding(times, embs, start, end), text))
            if best is None or score > best.score:
                best = Aligned(start, end, score)
        out.append(best)
    return out
