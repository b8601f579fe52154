"""The hostile-AltText corpus (`testing/data/hostile_alt_texts.yaml`) as Python objects.

Prompt-injection fixtures for any stage that places web text in a prompt: instructions to
ignore the task, fake chat turns and delimiters, special tokens of several model families,
control characters, very long texts and other languages.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

CORPUS = Path(__file__).parent / "data" / "hostile_alt_texts.yaml"


@dataclass(frozen=True, slots=True)
class HostileAltText:
    id: str
    kind: str
    text: str
    obeyed: str  # what a model that followed the injection would answer


@cache
def hostile_alt_texts() -> tuple[HostileAltText, ...]:
    entries = yaml.safe_load(CORPUS.read_text(encoding="utf-8"))
    return tuple(
        HostileAltText(e["id"], e["kind"], e["text"] * e.get("repeat", 1), e["obeyed"]) for e in entries
    )
