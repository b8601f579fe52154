"""ScaleCap's golden-sentence filter, as a pure function of tokens, logits and part of speech.

ScaleCap (Xing et al., 2025, "ScaleCap: Inference-Time Scalable Image Captioning via Dual-Modality
Debiasing"): a caption is teacher-forced through the VLM twice, with the image and without it.
For each token the raw logit of the token actually written is read in both passes; the gap
(with − without) says how much the image, rather than the language prior, made the model write
it. Gaps count only on content words (ADJ, ADV, INTJ, NOUN, NUM, PROPN, VERB); other tokens get a
gap of 0. The caption is cut into sentences at `.`, `?`, `!` and line breaks, and sentences into
clauses at commas; a clause is kept when its largest gap exceeds the threshold (default 0); a
sentence survives with its kept clauses; when no sentence survives, the caption is kept whole.

Differences from the reference code (Cooperx521/ScaleCap, `get_golden_sentences`), on purpose:
- a last sentence without closing punctuation is rated like the others (the reference drops it);
- a kept sentence keeps its own closing mark (`.`/`?`/`!`) and its kept clauses are joined with
  ", " (the reference joins with "," and adds "." later);
- tokens are mapped to parts of speech by character offsets (the reference re-spells words
  token by token, which breaks on tokenizer quirks and then silently rates every token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from capmill.backends.base import Word

CONTENT_POS = frozenset({"ADJ", "ADV", "INTJ", "NOUN", "NUM", "PROPN", "VERB"})
SENTENCE_MARKS = frozenset(".?!…")
CLAUSE_MARKS = frozenset(",")


@dataclass
class Clause:
    text: str
    max_gap: float  # largest masked gap of its tokens (-inf for a clause of no token)
    kept: bool


@dataclass
class Sentence:
    clauses: list[Clause]
    end: str  # the closing mark it had ("." when it had none)

    @property
    def kept(self) -> bool:
        return any(c.kept for c in self.clauses)

    @property
    def text(self) -> str:
        return _join([c.text for c in self.clauses], self.end)

    @property
    def kept_text(self) -> str:
        return _join([c.text for c in self.clauses if c.kept], self.end)


@dataclass
class GoldenResult:
    """The filter's verdict on one caption: every sentence with its clauses and their gaps."""

    sentences: list[Sentence] = field(default_factory=list)
    whole: bool = False  # nothing survived, so the caption is kept whole
    caption: str = ""

    @property
    def kept(self) -> list[str]:
        """The golden sentences (or the whole caption when none survived)."""
        if self.whole:
            return [self.caption.strip()] if self.caption.strip() else []
        return [s.kept_text for s in self.sentences if s.kept]

    @property
    def text(self) -> str:
        return " ".join(self.kept)

    def meta(self) -> dict[str, Any]:
        """What the caption's meta records: each clause with its gap and verdict."""
        return {
            "kept_whole": self.whole,
            "clauses": [{"text": c.text, "max_gap": None if math.isinf(c.max_gap) else round(c.max_gap, 4),
                         "kept": c.kept, "sentence": i}
                        for i, s in enumerate(self.sentences) for c in s.clauses],
            "kept_sentences": self.kept,
            "dropped_clauses": sum(1 for s in self.sentences for c in s.clauses if not c.kept),
        }


def _join(clauses: list[str], end: str) -> str:
    body = ", ".join(c for c in clauses if c)
    return f"{body}{end}" if body else ""


def masked_gaps(with_image: Sequence[float], without_image: Sequence[float], content: Sequence[bool]) -> list[float]:
    """with − without per token, 0 where the token is not part of a content word."""
    if not len(with_image) == len(without_image) == len(content):
        raise ValueError(f"lengths differ: {len(with_image)} with-image, {len(without_image)} without, "
                         f"{len(content)} part-of-speech flags")
    return [(w - wo) if c else 0.0 for w, wo, c in zip(with_image, without_image, content)]


def content_mask(tokens: Sequence[str], words: Sequence[Word], pos: frozenset[str] = CONTENT_POS) -> list[bool]:
    """For each token, whether it belongs to a content word. `words` are the analysis of
    `"".join(tokens)` (their offsets index that string); a token belongs to the word holding its
    first non-space character, so the pieces of a split word ("bicy" + "cle") share its tag."""
    mask = []
    offset = 0
    wi = 0
    ordered = sorted(words, key=lambda w: w.start)
    for token in tokens:
        lead = len(token) - len(token.lstrip())
        first = offset + lead
        offset += len(token)
        if lead == len(token):  # whitespace only
            mask.append(False)
            continue
        while wi < len(ordered) and ordered[wi].end <= first:
            wi += 1
        word = ordered[wi] if wi < len(ordered) and ordered[wi].start <= first < ordered[wi].end else None
        mask.append(word is not None and word.pos in pos)
    return mask


def _kind(tokens: Sequence[str], i: int) -> str:
    """"sentence", "clause" or "word" for token i. A mark counts only when the token holds
    nothing else; a "." between digits (3.5) is part of a number."""
    token = tokens[i]
    stripped = token.strip(" \t")
    if not stripped:
        return "sentence" if "\n" in token else "word"
    if "\n" in stripped and all(ch in SENTENCE_MARKS or ch.isspace() for ch in stripped):
        return "sentence"
    if all(ch in SENTENCE_MARKS for ch in stripped):
        if stripped == "." and 0 < i < len(tokens) - 1:
            before, after = tokens[i - 1], tokens[i + 1]
            if before[-1:].isdigit() and after[:1].isdigit():
                return "word"
        return "sentence"
    if all(ch in CLAUSE_MARKS for ch in stripped):
        return "clause"
    # A word that carries its closing mark ("dog." in some vocabularies), not an abbreviation-
    # like number ("3.").
    tail = stripped.rstrip("".join(SENTENCE_MARKS | CLAUSE_MARKS) + "\n")
    if tail != stripped and not tail[-1:].isdigit():
        return "word+sentence" if any(ch in SENTENCE_MARKS or ch == "\n" for ch in stripped[len(tail):]) else "word+clause"
    return "word"


def golden_sentences(tokens: Sequence[str], gaps: Sequence[float], threshold: float = 0.0) -> GoldenResult:
    """Rate each clause by its largest gap; see the module docstring. `gaps` are per token and
    already masked to content words (`masked_gaps`)."""
    if len(tokens) != len(gaps):
        raise ValueError(f"{len(tokens)} tokens but {len(gaps)} gaps")
    caption = "".join(tokens)
    sentences: list[Sentence] = []
    clauses: list[Clause] = []
    piece: list[str] = []
    scores: list[float] = []

    def close_clause() -> None:
        text = "".join(piece).strip()
        if text:
            best = max(scores) if scores else -math.inf
            clauses.append(Clause(text=text, max_gap=best, kept=best > threshold))
        piece.clear()
        scores.clear()

    def close_sentence(mark: str) -> None:
        close_clause()
        if clauses:
            end = next((ch for ch in mark if ch in SENTENCE_MARKS), ".")
            sentences.append(Sentence(clauses=list(clauses), end=end))
        clauses.clear()

    for i, (token, gap) in enumerate(zip(tokens, gaps)):
        kind = _kind(tokens, i)
        if kind.startswith("word+"):
            lead = token[: len(token) - len(token.lstrip(" \t"))]
            word = token.strip(" \t")
            cut = len(word.rstrip("".join(SENTENCE_MARKS | CLAUSE_MARKS) + "\n"))
            piece.append(lead + word[:cut])
            scores.append(gap)
            close_sentence(word[cut:]) if kind == "word+sentence" else close_clause()
            continue
        if kind == "sentence":
            close_sentence(token.strip())
        elif kind == "clause":
            close_clause()
        else:
            piece.append(token)
            scores.append(gap)
    close_sentence("")
    result = GoldenResult(sentences=sentences, caption=caption)
    result.whole = not any(s.kept for s in sentences)
    return result
