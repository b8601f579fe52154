"""Checks an LLM's fused caption must pass before it replaces anything (CapsFusion, CVPR 2024).

Each guard is a pure function of (output, AltText, caption) returning True when the output is
bad. `first_failure` runs them in a fixed order and names the first that fires; the fuse stage
then falls back to the better input and records that name, so a run's stats count fallbacks
by reason. The order puts cheap, certain checks (empty, refusal) before fuzzy ones.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from pydantic import Field

from capmill.components import Strict

EMPTY, REFUSAL, RUNAWAY, COPY, CONCATENATION, LOST_ENTITIES, OFF_TOPIC = (
    "empty", "refusal", "runaway", "copy", "concatenation", "lost_entities", "off_topic",
)

# Openings of a model declining or talking about itself instead of captioning.
DEFAULT_REFUSALS = [
    r"i'?m sorry", r"i am sorry", r"sorry,? (?:but )?i", r"i apologi[sz]e", r"as an ai\b", r"as a language model",
    r"as an? (?:ai )?assistant", r"i (?:can ?not|can't|won't|am unable to|'m unable to|am not able to)",
    r"unfortunately,? i", r"i do not have (?:the ability|access)", r"(?:here is|here's) (?:the|a|your) (?:fused |new |merged )?caption",
]

# Capitalised words that are not names: sentence openers and caption boilerplate.
_NOT_ENTITIES = set(
    "a an the this that these those there here it its in on at of for with and or but to from by my our your "
    "his her their image photo picture photograph stock view close closeup i we you he she they".split()
)
_WORD = re.compile(r"[^\W_][\w'’.-]*", re.UNICODE)
_NUMBER = re.compile(r"^\d[\d.,:/-]*$")


class GuardConfig(Strict):
    """Thresholds of the fusion guards. Defaults follow CapsFusion's setting (outputs of at
    most 80 new tokens, about 23 words on average) with generous margins."""

    # Runaway: more words than this, or one 4-word phrase repeated this many times.
    max_words: int = Field(120, ge=1)
    max_phrase_repeats: int = Field(3, ge=2)
    # Copy: token-set similarity with one input at or above this.
    copy_similarity: float = Field(0.95, gt=0, le=1)
    # Concatenation: the output holds this share of both inputs' words, in their order.
    concat_coverage: float = Field(0.9, gt=0, le=1)
    # Lost entities: more than this share of the AltText's names and numbers missing.
    max_lost_entities: float = Field(0.5, ge=0, le=1)
    # Off topic: the output keeps less than this share of the caption's content words (an
    # answer to an instruction hidden in the AltText keeps almost none).
    min_caption_overlap: float = Field(0.2, ge=0, le=1)
    refusal_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS))


def words(text: str) -> list[str]:
    return [w.strip(".-'’").lower() for w in _WORD.findall(text or "") if w.strip(".-'’")]


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


def is_empty(output: str, alt: str, caption: str, cfg: GuardConfig) -> bool:
    return not words(output)


def is_refusal(output: str, alt: str, caption: str, cfg: GuardConfig) -> bool:
    head = output.strip().lower().replace("’", "'")[:200]
    return any(re.match(p, head) for p in cfg.refusal_patterns)


def is_runaway(output: str, alt: str, caption: str, cfg: GuardConfig) -> bool:
    ws = words(output)
    if len(ws) > cfg.max_words:
        return True
    grams = Counter(tuple(ws[i:i + 4]) for i in range(len(ws) - 3))
    return bool(grams) and max(grams.values()) >= cfg.max_phrase_repeats


def _jaccard(a: list[str], b: list[str]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 0.0


def is_copy(output: str, alt: str, caption: str, cfg: GuardConfig) -> bool:
    out = words(output)
    return any(_jaccard(out, words(src)) >= cfg.copy_similarity for src in (alt, caption) if words(src))


def _in_order_coverage(source: list[str], output: list[str]) -> float:
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


def is_concatenation(output: str, alt: str, caption: str, cfg: GuardConfig) -> bool:
    out, a, c = words(output), words(alt), words(caption)
    if not a or not c:
        return False
    return min(_in_order_coverage(a, out), _in_order_coverage(c, out)) >= cfg.concat_coverage


def lost_entity_share(output: str, alt: str) -> float:
    names = entities(alt)
    if not names:
        return 0.0
    kept = set(words(output)) | {w for w in (output or "").lower().split()}
    return sum(1 for n in names if n not in kept) / len(names)


def loses_entities(output: str, alt: str, caption: str, cfg: GuardConfig) -> bool:
    return lost_entity_share(output, alt) > cfg.max_lost_entities


def is_off_topic(output: str, alt: str, caption: str, cfg: GuardConfig) -> bool:
    content = {w for w in words(caption) if w not in _NOT_ENTITIES and len(w) > 2}
    if not content:
        return False
    return len(content & set(words(output))) / len(content) < cfg.min_caption_overlap


Guard = Callable[[str, str, str, GuardConfig], bool]

# Reason → check, in the order they run.
GUARDS: dict[str, Guard] = {
    EMPTY: is_empty,
    REFUSAL: is_refusal,
    RUNAWAY: is_runaway,
    COPY: is_copy,
    CONCATENATION: is_concatenation,
    OFF_TOPIC: is_off_topic,
    LOST_ENTITIES: loses_entities,
}


def first_failure(output: str, alt: str, caption: str, cfg: GuardConfig, skip: frozenset[str] = frozenset()) -> str | None:
    """The reason of the first guard that rejects `output`, or None when it passes them all."""
    for reason, check in GUARDS.items():
        if reason not in skip and check(output, alt, caption, cfg):
            return reason
    return None
