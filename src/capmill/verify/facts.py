"""FuseCap's expert facts, serialised deterministically for a prompt.

FuseCap (Rotstein et al., WACV 2024, "FuseCap: Leveraging Large Language Models for Enriched
Fused Image Captions"): an object detector, an attribute recogniser and OCR describe what they
see; an LLM fuses those facts with the caption. Here the facts are serialised in a stable order
with their confidences and bounded in size, so the same experts' output always gives the same
prompt (a resumed run sends the same requests) and no image floods the LLM's context:

- objects: detections at or above the score threshold, one entry per label (the count, the best
  score and the best box), sorted by best score (highest first), then label; at most
  `max_objects`;
- attributes: the answer of the attribute question for each listed object, in the objects' order;
- text: OCR lines at or above the confidence threshold in reading order (top to bottom, then left
  to right), at most `max_text_lines`, each cut to `max_line_chars`.

OCR text is untrusted (anyone can print words on a sign); it is serialised apart from the other
facts so the stage can place it in its own delimited block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from capmill.verify.regions import Box, normalised


@dataclass(frozen=True)
class ObjectFact:
    label: str
    count: int
    score: float
    box: tuple[float, ...]  # normalised [0, 1]
    attributes: str = ""

    def line(self) -> str:
        count = f"{self.count} × " if self.count > 1 else ""
        attrs = f", {self.attributes}" if self.attributes else ""
        return f"{count}{self.label} ({self.score:.2f}) at [{', '.join(f'{v:.2f}' for v in self.box)}]{attrs}"


@dataclass
class Facts:
    objects: list[ObjectFact] = field(default_factory=list)
    text_lines: list[tuple[str, float]] = field(default_factory=list)  # (text, confidence)
    dropped: dict[str, int] = field(default_factory=dict)  # reason → count

    @property
    def empty(self) -> bool:
        return not self.objects and not self.text_lines

    def objects_text(self) -> str:
        """The object facts as one line (capmill's prompts put untrusted text on one line)."""
        return "; ".join(o.line() for o in self.objects)

    def ocr_text(self) -> str:
        return " | ".join(text for text, _ in self.text_lines)

    def to_meta(self) -> dict[str, Any]:
        return {
            "objects": [{"label": o.label, "count": o.count, "score": round(o.score, 4), "box": list(o.box),
                         "attributes": o.attributes} for o in self.objects],
            "text": [{"text": t, "confidence": round(c, 4)} for t, c in self.text_lines],
            "dropped": dict(sorted(self.dropped.items())),
        }


def group_objects(detections: list[tuple[Box, str, float]], width: float, height: float, min_score: float,
                  max_objects: int) -> tuple[list[ObjectFact], dict[str, int]]:
    """One fact per label (see the module docstring) and the count of what was left out, by why."""
    dropped: dict[str, int] = {}
    best: dict[str, tuple[float, Box]] = {}
    counts: dict[str, int] = {}
    for box, label, score in detections:
        label = " ".join(label.lower().split())
        if not label:
            dropped["no_label"] = dropped.get("no_label", 0) + 1
            continue
        if score < min_score:
            dropped["below_score"] = dropped.get("below_score", 0) + 1
            continue
        counts[label] = counts.get(label, 0) + 1
        if label not in best or (score, _key(box)) > (best[label][0], _key(best[label][1])):
            best[label] = (score, box)
    ordered = sorted(best, key=lambda lb: (-best[lb][0], lb))
    if len(ordered) > max_objects:
        dropped["over_max_objects"] = len(ordered) - max_objects
    facts = [ObjectFact(label=lb, count=counts[lb], score=float(best[lb][0]),
                        box=tuple(normalised(best[lb][1], width, height))) for lb in ordered[:max_objects]]
    return facts, dropped


def _key(box: Box) -> tuple[float, ...]:
    # Ties between equal scores go to the box nearest the top-left, so the choice is stable.
    return tuple(-v for v in box)


def reading_order(lines: list[tuple[str, Box, float]], min_confidence: float, max_lines: int,
                  max_chars: int) -> tuple[list[tuple[str, float]], dict[str, int]]:
    """OCR lines kept and ordered (see the module docstring), with what was left out by why.
    Lines whose tops lie within half a line height of each other count as one row."""
    dropped: dict[str, int] = {}
    kept = []
    for text, box, conf in lines:
        text = " ".join(text.split())
        if not text:
            continue
        if conf < min_confidence:
            dropped["below_confidence"] = dropped.get("below_confidence", 0) + 1
            continue
        kept.append((text, box, conf))
    heights = sorted(b[3] - b[1] for _, b, _ in kept) or [1.0]
    row = max(heights[len(heights) // 2] / 2, 1.0)
    kept.sort(key=lambda t: (round(t[1][1] / row), t[1][0], t[0]))
    if len(kept) > max_lines:
        dropped["over_max_lines"] = len(kept) - max_lines
    out = []
    for text, _, conf in kept[:max_lines]:
        if len(text) > max_chars:
            text = text[:max_chars].rstrip() + " …"
            dropped["cut_long_line"] = dropped.get("cut_long_line", 0) + 1
        out.append((text, float(conf)))
    return out, dropped
