"""Parsers of the LLM answers the verifying stages ask for: lists, sectioned lists, yes/no.

Each returns None when the answer cannot be read as asked, so the caller can ask once more and
then fall back (`capmill.verify.steps`). They accept the shapes instruction-tuned models write:
a JSON array or object (also inside a ```json fence), numbered or bulleted lines, or one
comma-separated line, with a leading "Here are …:" sentence ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•·]|\d{1,3}[.)]|\(\d{1,3}\))\s+")
_PREAMBLE = re.compile(r"^\s*(?:sure|okay|ok|here(?: is| are|'s)|the (?:objects|claims|list)|below)\b[^\n]*:\s*$",
                       re.IGNORECASE)
_NONE = {"none", "nothing", "n/a", "no objects", "no claims", "-", "[]"}


def _json(text: str):
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    start = min((i for i in (body.find("["), body.find("{")) if i >= 0), default=-1)
    if start < 0:
        return None
    for end in range(len(body), start, -1):
        if body[end - 1] in "]}":
            try:
                return json.loads(body[start:end])
            except ValueError:
                continue
    return None


def _clean(item: str) -> str:
    item = _BULLET.sub("", item).strip().strip("\"'“”‘’`")
    return " ".join(item.split()).rstrip(",;")


def _dedupe(items: list[str], max_items: int | None) -> list[str]:
    seen, out = set(), []
    for item in items:
        key = item.lower().rstrip(".")
        if item and key not in seen and key not in _NONE:
            seen.add(key)
            out.append(item)
    return out[:max_items] if max_items is not None else out


def _lines(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if line.strip() and not _PREAMBLE.match(line)]
    if len(lines) == 1 and not _BULLET.match(lines[0]):
        # one line: a comma- or semicolon-separated list ("dog, red ball; tree.")
        return [part for part in re.split(r"[;,]", lines[0].strip().rstrip("."))]
    return lines


def parse_items(text: str | None, max_items: int | None = None, max_words: int | None = None) -> list[str] | None:
    """A list of short items (object names, questions). None when the answer holds no list, or
    when an item is longer than `max_words` (the model wrote prose instead of a list)."""
    if not text or not text.strip():
        return None
    data = _json(text)
    if isinstance(data, dict) and len(data) == 1:
        data = next(iter(data.values()))
    if isinstance(data, list):
        raw = [str(x) for x in data if isinstance(x, (str, int, float))]
        if not raw and data:
            return None
    else:
        if text.strip().lower().rstrip(".") in _NONE:
            return []
        raw = _lines(text)
    items = [_clean(x) for x in raw]
    items = [x for x in items if x]
    if max_words is not None and any(len(x.split()) > max_words for x in items):
        return None
    if not items:
        return [] if isinstance(data, list) else None
    return _dedupe(items, max_items)


def parse_sections(text: str | None, names: Sequence[str], max_words: int | None = None) -> dict[str, list[str]] | None:
    """Lists under named headings: `{"objects": [...], "claims": [...]}` as JSON, or text such as

        OBJECTS: dog, ball
        CLAIMS:
        - The dog is brown.

    Headings are matched case-insensitively; a missing heading is an empty list, but at least one
    must be there. None when no heading is found or an item is longer than `max_words`."""
    if not text or not text.strip():
        return None
    wanted = [n.lower() for n in names]
    data = _json(text)
    if isinstance(data, dict):
        lowered = {str(k).lower().strip(): v for k, v in data.items()}
        if any(n in lowered for n in wanted):
            out = {}
            for n in wanted:
                value = lowered.get(n, [])
                if isinstance(value, str):
                    value = [value]
                if not isinstance(value, list):
                    return None
                out[n] = _dedupe([_clean(str(v)) for v in value if isinstance(v, (str, int, float))], None)
            return _check_words(out, max_words)
    heading = re.compile(r"^\s*[#*_\s]*(" + "|".join(map(re.escape, wanted)) + r")[*_\s]*:\s*(.*)$", re.IGNORECASE)
    out: dict[str, list[str]] = {n: [] for n in wanted}
    current = None
    found = False
    for line in text.splitlines():
        m = heading.match(line)
        if m:
            current, found = m.group(1).lower(), True
            rest = m.group(2).strip().lstrip("*_ ").strip()
            if rest and rest.lower().rstrip(".") not in _NONE:
                out[current].extend(_lines(rest) if not _BULLET.match(rest) else [rest])
            continue
        if current is not None and line.strip():
            out[current].append(line)
    if not found:
        return None
    return _check_words({n: _dedupe([_clean(x) for x in items], None) for n, items in out.items()}, max_words)


def _check_words(out: dict[str, list[str]], max_words: int | None) -> dict[str, list[str]] | None:
    if max_words is not None and any(len(x.split()) > max_words for items in out.values() for x in items):
        return None
    return out


def yes_no(text: str | None) -> bool | None:
    """True for an answer opening with yes, False with no, None otherwise."""
    m = re.match(r"^\W*(yes|no)\b", (text or "").strip().lower())
    return None if m is None else m.group(1) == "yes"
