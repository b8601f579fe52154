"""Strict readers of a judge's answer.

A verdict is the whole answer: a number (or `tie`), optionally with the word "caption" before it
and punctuation or Markdown emphasis around it ("3", "Caption 3.", "**2**", "(1)"). Anything else
— a number inside a sentence, two numbers, a number out of range, an explanation — is no verdict:
the judge stage asks once more and otherwise records that there was none. Reading "the first
number in the answer" would turn "Caption 2 is worse than caption 1" into a vote for 2, and a
refusal that mentions a number into a verdict.
"""

from __future__ import annotations

import re

TIE = 0

_NUMBER = re.compile(r"^[\s*_`'\"(\[#]*(?:caption|option|answer|grade|score)?\s*[:#]?\s*(\d{1,3})[\s*_`'\")\].!]*$",
                     re.IGNORECASE)
_TIE = re.compile(r"^[\s*_`'\"(\[]*(?:tie|equal|same)[\s*_`'\")\].!]*$", re.IGNORECASE)


def _number(answer: str | None) -> int | None:
    if answer is None:
        return None
    m = _NUMBER.match(answer.strip())
    return int(m.group(1)) if m else None


def parse_choice(answer: str | None, count: int) -> int | None:
    """The position (1 … count) a list judge named, or None."""
    n = _number(answer)
    return n if n is not None and 1 <= n <= count else None


def parse_pair(answer: str | None) -> int | None:
    """1 or 2 for the caption a pairwise judge preferred, TIE (0) for a tie, or None."""
    if answer is not None and _TIE.match(answer.strip()):
        return TIE
    return parse_choice(answer, 2)


def parse_grade(answer: str | None, scale: int, low: int = 1) -> int | None:
    """The grade (low … scale) a grader gave, or None."""
    n = _number(answer)
    return n if n is not None and low <= n <= scale else None
