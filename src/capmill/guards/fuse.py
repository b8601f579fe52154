"""Checks a fused caption passes on top of the generic ones (CapsFusion, CVPR 2024).

A fusion must be a new caption made of its two inputs: not one of them copied, not the two
pasted together, still about what the caption saw, and still carrying the AltText's names and
numbers. Each check reads the inputs from `given.sources["alt_text"]` and
`given.sources["caption"]` and returns what it found, like the generic checks; the fuse stage
runs them through `OutputGuard(config, extra=FUSE_CHECKS)`.
"""

from __future__ import annotations

import re

from pydantic import Field

from capmill.guards.checks import GuardInput, words
from capmill.guards.config import GuardConfig

COPY, CONCATENATION, LOST_ENTITIES, OFF_TOPIC = "copy", "concatenation", "lost_entities", "off_topic"

# Capitalised words that are not names: sentence openers, caption boilerplate and the
# imperatives web pages open with ("Visit our shop", "Click to enlarge").
_NOT_ENTITIES = set(
    "a an the this that these those there here it its in on at of for with and or but to from by my our your "
    "his her their image photo picture photograph stock view close closeup i we you he she they "
    "visit click buy shop see get find read watch learn discover explore ignore new free best top sale".split()
)
_WORD = re.compile(r"[^\W_][\w'’.-]*", re.UNICODE)
_NUMBER = re.compile(r"^\d[\d.,:/-]*$")


class FuseGuardConfig(GuardConfig):
    """Guards of the fuse stage: the generic ones plus the fusion thresholds. Defaults follow
    CapsFusion's setting (outputs of at most 80 new tokens, about 23 words on average) with
    generous margins."""

    max_words: int | None = Field(120, ge=1)
    # Copy: token-set similarity with one input at or above this.
    copy_similarity: float = Field(0.95, gt=0, le=1)
    # Concatenation: the output holds this share of both inputs' words, in their order.
    concat_coverage: float = Field(0.9, gt=0, le=1)
    # Lost entities: more than this share of the AltText's names and numbers missing.
    max_lost_entities: float = Field(0.5, ge=0, le=1)
    # Off topic: the output keeps less than this share of the caption's content words (an
    # answer to an instruction hidden in the AltText keeps almost none).
    min_caption_overlap: float = Field(0.2, ge=0, le=1)


def entities(alt_text: str) -> set[str]:
    """Names and numbers of an AltText, lower-cased: capitalised words that are not sentence
    boilerplate, and tokens that start with a digit."""
    found = set()
    for raw in _WORD.findall(alt_text or ""):
        token = raw.strip(".-'’")
        if not token:
            continue
        if _NUMBER.match(token) or (token[0].isupper() and token.lower() not in _NOT_ENTITIES):
            found.add(token.lower())
    return found


def _inputs(given: GuardInput) -> tuple[str, str]:
    return given.sources.get("alt_text", ""), given.sources.get("caption", "")


def _jaccard(a: list[str], b: list[str]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 0.0


def in_order_coverage(source: list[str], output: list[str]) -> float:
    """Share of `source`'s words found in `output` in the same order (longest common subsequence)."""
    if not source:
        return 1.0
    prev = [0] * (len(output) + 1)
    for s in source:
        cur = [0]
        for j, o in enumerate(output):
            cur.append(prev[j] + 1 if s == o else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1] / len(source)


def lost_entity_share(output: str, alt: str) -> float:
    names = entities(alt)
    if not names:
        return 0.0
    kept = set(words(output)) | {w for w in (output or "").lower().split()}
    return sum(1 for n in names if n not in kept) / len(names)


def check_copy(text: str, given: GuardInput, cfg: FuseGuardConfig) -> str | None:
    out = words(text)
    for name, src in zip(("alt_text", "caption"), _inputs(given), strict=True):
        if words(src) and _jaccard(out, words(src)) >= cfg.copy_similarity:
            return f"a copy of the {name}"
    return None


def check_concatenation(text: str, given: GuardInput, cfg: FuseGuardConfig) -> str | None:
    alt, caption = _inputs(given)
    out, a, c = words(text), words(alt), words(caption)
    if not a or not c:
        return None
    coverage = min(in_order_coverage(a, out), in_order_coverage(c, out))
    return f"both inputs {coverage:.0%} whole, in order" if coverage >= cfg.concat_coverage else None


def check_off_topic(text: str, given: GuardInput, cfg: FuseGuardConfig) -> str | None:
    content = {w for w in words(_inputs(given)[1]) if w not in _NOT_ENTITIES and len(w) > 2}
    if not content:
        return None
    share = len(content & set(words(text))) / len(content)
    return f"keeps {share:.0%} of the caption's content words" if share < cfg.min_caption_overlap else None


def check_lost_entities(text: str, given: GuardInput, cfg: FuseGuardConfig) -> str | None:
    share = lost_entity_share(text, _inputs(given)[0])
    return f"{share:.0%} of the AltText's names and numbers lost" if share > cfg.max_lost_entities else None


# Reason → check, run after the generic ones.
FUSE_CHECKS = {
    COPY: check_copy,
    CONCATENATION: check_concatenation,
    OFF_TOPIC: check_off_topic,
    LOST_ENTITIES: check_lost_entities,
}
