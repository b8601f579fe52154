"""The `guards:` section every generating stage takes."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from capmill.components import Strict
from capmill.guards.language import SCRIPTS, code_for
from capmill.guards.patterns import DEFAULT_REFUSALS

AUTO = "auto"


class GuardConfig(Strict):
    """Output guards of a stage. Defaults are meant to reject nothing a careful human would keep
    (tested on normal captions of the demo photos) while catching refusals, loops and injections."""

    # Off: every output is stored as the model wrote it (not recommended for web data).
    enabled: bool = True
    # Checks not run, by reason name (e.g. [language] for a multilingual model, [url] when the
    # image's own text may hold web addresses).
    skip: list[str] = Field(default_factory=list)
    # Times a rejected output is asked for again (all rejected outputs of a batch in one backend
    # call per round) before the stage's fallback applies.
    regenerate: int = Field(1, ge=0)
    # Expected language: "auto" (the stage decides: the caption stage takes the language its
    # format is written in, the fuse stage follows its `language` setting), a code or a name
    # ("en", "de", "German"), or null to not check it.
    language: str | None = AUTO
    # Openings of a refusal (regular expressions, matched at the start, lower-cased).
    refusal_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS))
    # Loop: a phrase of 1–12 words repeated back to back this many times (single words once more).
    loop_repeats: int = Field(3, ge=2)
    # Loop: one 4-word phrase this many times anywhere (at least one per 30 words in long texts).
    max_phrase_repeats: int = Field(3, ge=2)
    # Runaway: more words than this (null: the stage's length policy decides).
    max_words: int | None = Field(None, ge=1)
    # Echo: this many consecutive words copied from capmill's own instructions.
    echo_words: int = Field(8, ge=4)

    @field_validator("language")
    @classmethod
    def _known_language(cls, v: str | None) -> str | None:
        if v is None or v == AUTO:
            return v
        code = code_for(v)
        if code is None:
            raise ValueError(f"unknown language {v!r}: use a code ({', '.join(sorted(SCRIPTS))}), a language name, "
                             f"'auto', or null to not check the language")
        return code

    @field_validator("refusal_patterns")
    @classmethod
    def _valid_patterns(cls, v: list[str]) -> list[str]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"refusal pattern {pattern!r} is not a regular expression: {e}") from None
        return v
