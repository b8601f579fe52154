"""The checks every generated text passes, whatever stage wrote it.

A check is a pure function `(text, given, config) -> str | None`: None when the text passes,
otherwise a short detail of what it found (kept in the caption's meta). `given` (a `GuardInput`)
carries what the text may legitimately draw on — the inputs of the generation (AltText, input
caption, OCR text) — plus the instructions capmill wrote, the backend's finish reason and the
expected language.

| reason      | fires when                                                                            |
|-------------|---------------------------------------------------------------------------------------|
| `empty`     | no word at all                                                                        |
| `refusal`   | the model declines or talks about itself ("I'm sorry, but I can't …", "As an AI …")  |
| `loop`      | a phrase repeated back to back, one 4-word phrase again and again, a character run     |
| `runaway`   | more words than `max_words` (when set)                                               |
| `injection` | instruction-like text, chat-turn or delimiter echoes, the prompt echoed, or the output carrying out an instruction found in an input (its payload words, or a span copied from it); in grounded stages also a shouted word in no input ("PWNED") |
| `url`       | a web address, IP or e-mail address that no input contains                           |
| `markup`    | HTML tags, entities or Markdown links no input contains; active markup always         |
| `code`      | code, shell or SQL idioms, JSON objects that no input contains                        |
| `language`  | the text is in another language than expected (see `capmill.guards.language`)        |
| `truncated` | the backend stopped at its token limit mid-sentence, or the text ends mid-phrase       |
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from capmill.guards import language as lang
from capmill.guards.patterns import (
    ACTIVE_MARKUP,
    CODE,
    CONFUSABLES,
    DANGLING,
    DELIMITER_ECHO,
    INSTRUCTION_WORDS,
    MARKUP,
    OUTPUT_INSTRUCTIONS,
    PLACEHOLDERS,
    REFUSAL_ANYWHERE,
    SHOUTED_ORDER,
    SOURCE_INSTRUCTIONS,
    SPACELESS_INSTRUCTIONS,
    TERMINAL,
    URL,
)
from capmill.prompts.safety import forged_delimiter

if TYPE_CHECKING:
    from capmill.guards.config import GuardConfig

EMPTY, REFUSAL, LOOP, RUNAWAY, INJECTION, URL_REASON, MARKUP_REASON, CODE_REASON, LANGUAGE, TRUNCATED = (
    "empty", "refusal", "loop", "runaway", "injection", "url", "markup", "code", "language", "truncated",
)

_WORD = re.compile(r"[^\W_][\w'’.-]*", re.UNICODE)
_QUOTED = re.compile(r"[\"“«„「『]([^\"”»“」』]{2,80})[\"”»“」』]")
_SHOUTED = re.compile(r"\b[A-ZА-ЯЁ]{4,}\b")
_NOT_LETTERS = re.compile(r"[\W\d_]+", re.UNICODE)
_SPACELESS = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\u0e00-\u0e7f]")  # CJK, kana, hangul, Thai


def words(text: str) -> list[str]:
    return [w.strip(".-'’").lower() for w in _WORD.findall(text or "") if w.strip(".-'’")]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", (text or "").lower()).strip()


@dataclass
class GuardInput:
    """What one generated text is checked against.

    `sources`: the inputs the text may draw on, by name (`alt_text`, `caption`, `ocr_text`, …);
    a URL, markup or code is accepted only when one of them has it, and an instruction found in
    one of them must not be carried out. `prompt`: the instructions capmill wrote (untrusted
    blocks cut out), which the text must not echo. `finish`: the backend's finish reason for the
    text ("length" = stopped at the token limit). `language`: the expected language code (None:
    not checked). `grounded`: the text should be made of its sources' words (a fusion), so a
    shouted word none of them has was injected.
    """

    sources: dict[str, str] = field(default_factory=dict)
    prompt: str = ""
    finish: str | None = None
    language: str | None = None
    grounded: bool = False

    @cached_property
    def source_text(self) -> str:
        return _norm(" \n ".join(t for t in self.sources.values() if t))

    @cached_property
    def injected(self) -> dict[str, str]:
        """Sources that read as an attempt to instruct the model: name → what gave it away."""
        found = {}
        for name, text in self.sources.items():
            signal = instruction_signal(text or "")
            if signal:
                found[name] = signal
        return found

    @cached_property
    def payload(self) -> set[str]:
        """What the injected sources ask for: their content words and quoted phrases, without
        words that say how to answer and without words the clean sources also have."""
        if not self.injected:
            return set()
        clean = set()
        for name, text in self.sources.items():
            if name not in self.injected:
                clean.update(words(text))
        found: set[str] = set()
        for name in self.injected:
            text = self.sources[name]
            found.update(w for w in words(text) if (len(w) >= 3 or _SPACELESS.search(w)) and w not in INSTRUCTION_WORDS
                         and w not in _STOPWORDS and not w.isdigit())
            found.update(_norm(q) for q in _QUOTED.findall(text) if len(q.strip()) >= 2)
        return {w for w in found if w not in clean and not (set(words(w)) <= INSTRUCTION_WORDS | _STOPWORDS)}

    @cached_property
    def prompt_words(self) -> list[str]:
        return words(self.prompt)


_STOPWORDS = frozenset().union(*lang.stopwords().values(), "the a an and or of in on at to is are it this that".split())


def _spellings(text: str) -> tuple[str, ...]:
    """`text`, and its look-alike letters folded to Latin when it has any."""
    folded = text.translate(CONFUSABLES)
    return (text,) if folded == text else (text, folded)


def instruction_signal(text: str) -> str | None:
    """What makes `text` (an input) read as an attempt to instruct the model, or None."""
    for candidate in _spellings(text):
        m = SOURCE_INSTRUCTIONS.search(candidate) or SHOUTED_ORDER.search(candidate)
        if m:
            return m.group(0).strip()[:80]
    m = PLACEHOLDERS.search(text) or DELIMITER_ECHO.search(text)
    if m:
        return m.group(0)[:80]
    spaceless = _NOT_LETTERS.sub("", text.translate(CONFUSABLES))
    m = SPACELESS_INSTRUCTIONS.search(spaceless)
    return m.group(0)[:80] if m else forged_delimiter(text)


# ---- the checks ---------------------------------------------------------------------------------


def check_empty(text: str, given: GuardInput, cfg: GuardConfig) -> str | None:
    return None if words(text) else "no words"


def check_refusal(text: str, given: GuardInput, cfg: GuardConfig) -> str | None:
    head = text.strip().lower().replace("’", "'")[:200]
    for pattern in cfg.refusal_patterns:
        m = re.match(pattern, head)
        if m:
            return m.group(0)
    m = REFUSAL_ANYWHERE.search(text.replace("’", "'"))
    return m.group(0) if m else None


def find_loop(text: str, repeats: int, phrase_repeats: int) -> str | None:
    """A unit of 1–12 words repeated back to back `repeats` times (one more for single words),
    one 4-word phrase occurring `phrase_repeats` times or more (more in long texts: one per 30
    words), or a run of 8+ copies of a short character sequence."""
    m = re.search(r"(.{1,10}?)\1{7,}", text, re.DOTALL)
    if m and len(m.group(0)) >= 20:
        return f"{m.group(1)!r} repeated"
    ws = words(text)
    n = len(ws)
    for size in range(1, 13):
        need = repeats + (1 if size == 1 else 0)
        if size * need > n:
            break
        run = 0
        for i in range(n - size):
            run = run + 1 if ws[i] == ws[i + size] else 0
            if run // size + 1 >= need:
                start = i - run + 1
                return f"{' '.join(ws[start:start + size])!r} repeated back to back"
    grams = Counter(tuple(ws[i:i + 4]) for i in range(n - 3))
    if grams:
        gram, count = grams.most_common(1)[0]
        if count >= max(phrase_repeats, -(-n // 30)):
            return f"{' '.join(gram)!r} {count} times"
    return None


def check_loop(text: str, given: GuardInput, cfg: GuardConfig) -> str | None:
    return find_loop(text, cfg.loop_repeats, cfg.max_phrase_repeats)


def check_runaway(text: str, given: GuardInput, cfg: GuardConfig) -> str | None:
    n = len(words(text))
    return f"{n} words > {cfg.max_words}" if cfg.max_words is not None and n > cfg.max_words else None


def _echo(text_words: list[str], source_words: list[str], span: int) -> str | None:
    """A run of `span` words of `source_words` that `text_words` repeats, or None."""
    if len(text_words) < span or len(source_words) < span:
        return None
    spans = {tuple(source_words[i:i + span]) for i in range(len(source_words) - span + 1)}
    for i in range(len(text_words) - span + 1):
        if tuple(text_words[i:i + span]) in spans:
            return " ".join(text_words[i:i + span])
    return None


def check_injection(text: str, given: GuardInput, cfg: GuardConfig) -> str | None:
    for candidate in _spellings(text):
        m = OUTPUT_INSTRUCTIONS.search(candidate) or PLACEHOLDERS.search(candidate) or DELIMITER_ECHO.search(candidate)
        if m:
            return f"instruction-like text {m.group(0).strip()[:60]!r}"
    text_words = words(text)
    echoed = _echo(text_words, given.prompt_words, cfg.echo_words)
    if echoed:
        return f"echoes the prompt: {echoed[:80]!r}"
    if given.injected:
        lowered = _norm(text)
        have = set(text_words)
        for item in sorted(given.payload):
            if item in have or ((" " in item or _SPACELESS.search(item)) and item in lowered):
                return f"carries out the {', '.join(sorted(given.injected))}'s instruction: {item[:60]!r}"
        for name in given.injected:
            echoed = _echo(text_words, words(given.sources[name]), 6)
            if echoed:
                return f"repeats the {name}'s instruction: {echoed[:80]!r}"
    if given.grounded:
        for word in _SHOUTED.findall(text):
            if word.lower() not in given.source_text:
                return f"shouted word {word!r} in no input"
    return None


def _unsourced(pattern: re.Pattern, text: str, given: GuardInput, strip: str = "") -> str | None:
    for m in pattern.finditer(text):
        found = _norm(m.group(0)).rstrip(".,;:!?" + strip)
        if found and found not in given.source_text:
            return found[:80]
    return None


def check_url(text: str, given: GuardInput, cfg: GuardConfig) -> str | None:
    found = _unsourced(URL, text, given, strip="/")
    return f"{found} is in no input" if found else None


def check_markup(text: str, given: GuardInput, cfg: GuardConfig) -> str | None:
    m = ACTIVE_MARKUP.search(text)
    if m:
        return f"active markup {m.group(0)[:40]!r}"
    found = _unsourced(MARKUP, text, given)
    return f"{found} is in no input" if found else None


def check_code(text: str, given: GuardInput, cfg: GuardConfig) -> str | None:
    found = _unsourced(CODE, text, given)
    return f"code {found!r} is in no input" if found else None


def check_language(text: str, given: GuardInput, cfg: GuardConfig) -> str | None:
    return lang.mismatch(text, given.language) if given.language else None


def check_truncated(text: str, given: GuardInput, cfg: GuardConfig) -> str | None:
    stripped = text.rstrip()
    if not stripped:
        return None
    if given.finish == "length" and not stripped.endswith(TERMINAL):
        return "stopped at the token limit mid-sentence"
    if stripped[-1] in ",;:-–—(/&":
        return f"ends with {stripped[-1]!r}"
    ws = words(stripped)
    if ws and stripped[-1].isalnum() and ws[-1] in DANGLING:
        return f"ends with {ws[-1]!r}"
    if stripped.count("(") > stripped.count(")") or stripped.count("“") > stripped.count("”"):
        return "an unclosed bracket or quote"
    return None


Check = Callable[[str, GuardInput, "GuardConfig"], "str | None"]

# Reason → check, in the order they run; the first reason of a verdict is the one a fallback names.
CHECKS: dict[str, Check] = {
    EMPTY: check_empty,
    REFUSAL: check_refusal,
    LOOP: check_loop,
    RUNAWAY: check_runaway,
    INJECTION: check_injection,
    URL_REASON: check_url,
    MARKUP_REASON: check_markup,
    CODE_REASON: check_code,
    LANGUAGE: check_language,
    TRUNCATED: check_truncated,
}


def repair_truncated(text: str) -> str | None:
    """`text` cut after its last complete sentence, when at least three words remain."""
    cut = max(text.rfind(p) for p in ".!?。！？")
    if cut <= 0:
        return None
    repaired = text[:cut + 1].strip()
    return repaired if len(words(repaired)) >= 3 else None
