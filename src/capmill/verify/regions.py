"""Region geometry for Patch Matters: the main region, its 2×2 sub-regions, overlaps, adjacency.

Patch Matters (Zhang et al., CVPR 2025, "Patch Matters: Training-free Fine-grained Image
Caption Enhancement via Local Perception"): objects named in a one-sentence caption are matched
to detector boxes; the union of the matched boxes is the main region (the whole image when
nothing matches); the main region is cut into four equal sub-regions; adjacent sub-regions are
merged pairwise. Boxes are (x0, y0, x1, y1) in pixels, x to the right, y down.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

Box = tuple[float, float, float, float]

# The four sub-regions, in this order, and which of them touch along an edge: top-left/top-right,
# top-right/bottom-right, bottom-left/bottom-right, top-left/bottom-left (the reference's pairs).
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
ADJACENT = ((0, 1), (1, 3), (2, 3), (0, 2))


def area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def clip(box: Box, width: float, height: float) -> Box:
    x0, y0, x1, y1 = box
    x0, x1 = sorted((min(max(x0, 0.0), width), min(max(x1, 0.0), width)))
    y0, y1 = sorted((min(max(y0, 0.0), height), min(max(y1, 0.0), height)))
    return (x0, y0, x1, y1)


def union(boxes: Iterable[Box]) -> Box | None:
    boxes = list(boxes)
    if not boxes:
        return None
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def iou(a: Box, b: Box) -> float:
    inter = area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    total = area(a) + area(b) - inter
    return inter / total if total > 0 else 0.0


def quadrants(box: Box) -> list[Box]:
    """The four equal sub-regions of `box`, in `QUADRANTS` order."""
    x0, y0, x1, y1 = box
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    return [(x0, y0, mx, my), (mx, y0, x1, my), (x0, my, mx, y1), (mx, my, x1, y1)]


def normalised(box: Box, width: float, height: float, digits: int = 2) -> list[float]:
    """`box` in [0, 1] coordinates of the image, rounded: what prompts and records carry."""
    return [round(box[0] / width, digits), round(box[1] / height, digits),
            round(box[2] / width, digits), round(box[3] / height, digits)]


def pixel_box(box: Box) -> tuple[int, int, int, int]:
    """Integer crop box that covers `box`."""
    return (int(box[0]), int(box[1]), int(-(-box[2] // 1)), int(-(-box[3] // 1)))


def too_small(box: Box, min_side: int) -> bool:
    x0, y0, x1, y1 = pixel_box(box)
    return min(x1 - x0, y1 - y0) < min_side


def head_noun(phrase: str) -> str:
    """The last word of a phrase, lower-cased and made singular by the common English endings
    ("two red cars" → "car", "boxes" → "box", "puppies" → "puppy")."""
    words = re.findall(r"[a-z]+", phrase.lower())
    if not words:
        return ""
    word = words[-1]
    if len(word) > 3:
        if word.endswith("ies"):
            return word[:-3] + "y"
        if re.search(r"(?:[sxz]|ch|sh)es$", word):
            return word[:-2]
        if word.endswith("s") and not word.endswith(("ss", "us")):
            return word[:-1]
    return word


def matches(label: str, objects: Sequence[str]) -> str | None:
    """The first of `objects` that names the same thing as a detector `label` (same head noun,
    or the label is one of the object's words), or None."""
    head = head_noun(label)
    if not head:
        return None
    for obj in objects:
        if head_noun(obj) == head or head in {head_noun(w) for w in obj.split()}:
            return obj
    return None


def main_region(detections: Iterable[tuple[Box, str, float]], objects: Sequence[str], width: float,
                height: float, min_score: float) -> tuple[Box, list[dict]]:
    """The union of the boxes whose label names one of `objects` with a score of at least
    `min_score`, clipped to the image; the whole image when none does. Also returns the matched
    detections (label, object, score, box) for the record."""
    matched = []
    for box, label, score in detections:
        obj = matches(label, objects) if score >= min_score else None
        if obj is not None:
            matched.append({"label": label, "object": obj, "score": round(float(score), 4),
                            "box": normalised(clip(box, width, height), width, height)})
    boxes = [clip(box, width, height) for box, label, score in detections
             if score >= min_score and matches(label, objects) is not None]
    region = union(boxes)
    if region is None or area(region) <= 0:
        return (0.0, 0.0, float(width), float(height)), matched
    return region, matched
