"""Boxes of an image: read from a record, normalised to [0, 1], cropped with a margin.

A record gives boxes as a list (or a JSON string of one) whose items are `[x0, y0, x1, y1]`, or
objects with the box under `box` or `bbox` and optionally a `score` and a `label`. `pixels` are in
the coordinates of the image the record describes: its `width` and `height` when the record
states them (img2dataset and most web dumps do), else the decoded image's size. Normalised boxes
are kept as they are. Every stored box is `[x0, y0, x1, y1]` in [0, 1] of the image's width and
height, whatever the decoded size (a bounded resize keeps them valid), which is also the form
grounding-style training data takes.

A box that is not four numbers, is empty or inverted, or lies outside the image is refused with
the reason (clipping is done only for small overshoots, as detectors produce).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

# How far outside [0, 1] a normalised coordinate may be before the box is refused, not clipped.
OVERSHOOT = 0.02


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float
    score: float | None = None
    label: str | None = None

    def as_list(self, digits: int = 4) -> list[float]:
        return [round(v, digits) for v in (self.x0, self.y0, self.x1, self.y1)]

    def pixels(self, width: int, height: int, margin: float = 0.0) -> tuple[int, int, int, int]:
        """The box in the pixels of a `width` × `height` image, grown by `margin` (a share of its
        own width and height) on every side and kept inside the image."""
        w, h = self.x1 - self.x0, self.y1 - self.y0
        x0, x1 = max(0.0, self.x0 - margin * w), min(1.0, self.x1 + margin * w)
        y0, y1 = max(0.0, self.y0 - margin * h), min(1.0, self.y1 + margin * h)
        return (math.floor(x0 * width), math.floor(y0 * height), math.ceil(x1 * width), math.ceil(y1 * height))


def _items(raw: Any) -> list[Any] | None:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    return raw if isinstance(raw, list) else None


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def parse_boxes(raw: Any, width: float, height: float, units: str = "normalised") -> tuple[list[Box], list[str]]:
    """(boxes, problems): the valid boxes of `raw` normalised, and why each other item was refused.
    `width` and `height` convert pixel boxes."""
    items = _items(raw)
    if items is None:
        return [], [f"boxes are not a list (got {type(raw).__name__})"]
    boxes, problems = [], []
    for i, item in enumerate(items):
        score = label = None
        coords = item
        if isinstance(item, dict):
            coords = item.get("box", item.get("bbox"))
            score = _number(item.get("score"))
            label = str(item["label"])[:100] if item.get("label") is not None else None
        values = [_number(v) for v in coords] if isinstance(coords, (list, tuple)) else []
        if len(values) != 4 or any(v is None for v in values):
            problems.append(f"box {i}: not four numbers")
            continue
        if units == "pixels":
            values = [values[0] / width, values[1] / height, values[2] / width, values[3] / height]
        x0, y0, x1, y1 = values
        if min(values) < -OVERSHOOT or max(values) > 1 + OVERSHOOT:
            problems.append(f"box {i}: outside the image")
            continue
        x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1))
        if x1 <= x0 or y1 <= y0:
            problems.append(f"box {i}: empty or inverted")
            continue
        boxes.append(Box(x0, y0, x1, y1, score, label))
    return boxes, problems


def crop(image: Any, box: Box, margin: float = 0.0) -> Any:
    """The part of a PIL `image` inside `box` (grown by `margin`)."""
    return image.crop(box.pixels(image.width, image.height, margin))
