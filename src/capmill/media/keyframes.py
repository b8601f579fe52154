"""Keyframes for captioning: sampled frames with the redundant ones dropped.

ShareGPT4Video (Chen et al., NeurIPS 2024 Datasets and Benchmarks) captions a video from its
keyframes, keeping a frame only when it differs enough from the last one kept, so a static
shot costs one caption and a busy one many. `select_keyframes` is that rule on any frame
features (CLIP image embeddings when a scorer is configured, `pixel_features` otherwise).
"""

from __future__ import annotations

import numpy as np


def pixel_features(images, side: int = 16) -> np.ndarray:
    """Unit vectors of each image shrunk to side×side RGB, centred on mid-grey: frames of one
    shot point the same way, a cut to other colours or layout turns the vector away."""
    rows = []
    for image in images:
        small = np.asarray(image.convert("RGB").resize((side, side)), dtype=np.float32).reshape(-1)
        vec = (small - 127.5) / 127.5
        norm = float(np.linalg.norm(vec))
        rows.append(vec / norm if norm > 0 else vec)
    return np.stack(rows) if rows else np.zeros((0, side * side * 3), np.float32)


def select_keyframes(features: np.ndarray, threshold: float, limit: int, minimum: int = 1) -> list[int]:
    """Indices of the frames to keep, in order: the first frame, then every frame whose cosine
    similarity to the last kept one is below `threshold`. More than `limit` are thinned evenly
    (first and last kept); fewer than `minimum` are topped up with evenly spaced frames."""
    n = len(features)
    if n == 0:
        return []
    kept = [0]
    for i in range(1, n):
        if float(np.dot(features[i], features[kept[-1]])) < threshold:
            kept.append(i)
    if len(kept) < min(minimum, n):
        extra = np.linspace(0, n - 1, min(minimum, n)).round().astype(int).tolist()
        kept = sorted(set(kept) | set(extra))
    if len(kept) > limit:
        from capmill.media.sampling import thin

        kept = thin(kept, limit)
    return kept
