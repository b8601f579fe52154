"""Length targets of caption formats: counting, checking, and trimming at a boundary.

A format (see `prompts/formats/*.yaml`) may declare, under `options`:

    target: {unit: tokens, tokenizer: clip, max: 77}      # or {unit: words, max: 20}
    on_miss: {retries: 2, trim_at: sentence}

`tokens` are counted with a named tokenizer: `clip` is OpenAI CLIP's BPE (the one CLIP's text
tower reads; `capmill.text.clip_bpe`, no torch needed), counted *with* its start and end tokens, so `max: 77` means "fits
CLIP's 77-token context without truncation". Any other name is loaded with
`transformers.AutoTokenizer.from_pretrained(NAME)` and counted without special tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import Any, Literal

from pydantic import Field, ValidationError

from capmill.components import Strict
from capmill.errors import ConfigError, SetupError
from capmill.text.clip_bpe import count_clip_tokens

FIRST_TRY, REGENERATED, TRIMMED = "first_try", "regenerated", "trimmed"
OUTCOMES = (FIRST_TRY, REGENERATED, TRIMMED)


class LengthTarget(Strict):
    unit: Literal["words", "tokens"] = "words"
    # Tokenizer for unit=tokens: "clip" (CLIP's BPE, with start/end tokens) or a
    # transformers tokenizer name or path (without special tokens).
    tokenizer: str = "clip"
    max: int = Field(ge=1)


class MissPolicy(Strict):
    # Regenerations with a firmer instruction before trimming. Each costs one more batched
    # backend call for the captions that missed, so 1–2 keeps a run's cost predictable.
    retries: int = Field(2, ge=0)
    # Appended to the prompt on a retry; {limit} and {unit} are filled in.
    firmer: str = (
        "Your previous answer was too long. This time use at most {limit} {unit}: "
        "keep only the most important details."
    )
    # Where a caption that is still too long is cut: after a whole sentence, or after a whole
    # item of a comma-separated list (tags).
    trim_at: Literal["sentence", "item"] = "sentence"


def length_settings(options: dict[str, Any], where: str) -> tuple[LengthTarget | None, MissPolicy]:
    """The target and policy a format's `options` declare; a malformed one is a ConfigError."""
    try:
        target = LengthTarget.model_validate(options["target"]) if options.get("target") else None
        policy = MissPolicy.model_validate(options.get("on_miss") or {})
    except ValidationError as e:
        raise ConfigError(f"{where}: invalid length target or on_miss: {e}") from None
    return target, policy


def count_words(text: str) -> int:
    return len(text.split())


@cache
def _hf_counter(name: str) -> Callable[[str], int]:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise SetupError(f"tokenizer {name!r} needs transformers: pip install 'capmill[transformers]'") from None
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise SetupError(
            f"could not load tokenizer {name!r} for a length target ({e}); use 'clip', a local tokenizer "
            f"folder, or download it first (hf download {name})"
        ) from None
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def token_counter(tokenizer: str) -> Callable[[str], int]:
    """A function counting tokens of `tokenizer`; loading it is a setup step (may raise SetupError)."""
    if tokenizer == "clip":
        return count_clip_tokens
    return _hf_counter(tokenizer)


def counter_for(target: LengthTarget) -> Callable[[str], int]:
    return count_words if target.unit == "words" else token_counter(target.tokenizer)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """Sentences split at . ! ? followed by space, and at newlines (DreamLIP's rule)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def split_items(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"[,;\n]", text) if s.strip()]


def trim(text: str, limit: int, count: Callable[[str], int], at: str = "sentence") -> str:
    """The longest prefix of whole sentences (or list items) that fits `limit`.

    When even the first piece is too long, its words are cut to fit and it is closed with a
    period, so a trimmed caption is always within the limit and ends on a whole word (unless
    not one word fits, when the first word is cut).
    """
    pieces = split_sentences(text) if at == "sentence" else split_items(text)
    joiner = " " if at == "sentence" else ", "
    kept: list[str] = []
    for piece in pieces:
        if count(joiner.join([*kept, piece])) > limit:
            break
        kept.append(piece)
    if kept:
        return joiner.join(kept)
    words = (pieces[0] if pieces else text).split()
    lo, hi = 0, len(words)  # binary search for the most words that fit with a closing period
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(" ".join(words[:mid]).rstrip(",;:") + ".") <= limit:
            lo = mid
        else:
            hi = mid - 1
    if lo:
        return " ".join(words[:lo]).rstrip(",;:.") + "."
    # Not even one word fits (a run of symbols with no spaces tokenises into dozens of
    # pieces): keep the longest character prefix of it that does.
    first = words[0] if words else ""
    lo, hi = 0, len(first)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(first[:mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return first[:lo]


def truncate_to(text: str, limit: int, count: Callable[[str], int]) -> str:
    """The longest word prefix of `text` within `limit` (no closing period: for inputs, not outputs)."""
    if count(text) <= limit:
        return text
    words = text.split()
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(" ".join(words[:mid])) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def length_meta(text: str, target: LengthTarget | None, attempts: int, outcome: str | None) -> dict[str, Any]:
    """What `meta["length"]` records for a caption: sizes, the target, and how it was met
    (`outcome` None for captions without a length policy, e.g. fused ones)."""
    meta: dict[str, Any] = {"words": count_words(text), "clip_tokens": count_clip_tokens(text), "attempts": attempts}
    if outcome is not None:
        meta["outcome"] = outcome
    if target is not None:
        meta["target"] = {"unit": target.unit, "max": target.max,
                          **({"tokenizer": target.tokenizer} if target.unit == "tokens" else {})}
        if target.unit == "tokens" and target.tokenizer != "clip":
            meta["tokens"] = counter_for(target)(text)
    return meta
