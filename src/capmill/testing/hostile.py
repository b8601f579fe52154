"""The hostile-AltText corpus (`testing/data/hostile_alt_texts.yaml`) as Python objects, and
the benign counterpart (`testing/data/good_captions.yaml`) the guards must leave alone.

Prompt-injection fixtures for any stage that places web text in a prompt: instructions to
ignore the task, fake chat turns and forged delimiters, special tokens of several model
families, injections appended to a good answer, answers that obey the AltText, control
characters, very long texts and other languages. `obeying_script` turns the corpus into answers
for the fake backend's `script`, so the fake plays a model that obeys every injection it is
shown (a test double, documented as such).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

CORPUS = Path(__file__).parent / "data" / "hostile_alt_texts.yaml"
GOOD = Path(__file__).parent / "data" / "good_captions.yaml"


@dataclass(frozen=True, slots=True)
class HostileAltText:
    id: str
    kind: str
    text: str
    obeyed: str  # what a model that followed the injection would answer ({caption}, {prompt} slots)

    def obeyed_with(self, caption: str) -> str:
        """`obeyed` with a plausible caption of the image in place of "{caption}"."""
        return self.obeyed.replace("{caption}", caption)


@cache
def hostile_alt_texts() -> tuple[HostileAltText, ...]:
    entries = yaml.safe_load(CORPUS.read_text(encoding="utf-8"))
    return tuple(
        HostileAltText(e["id"], e["kind"], e["text"] * e.get("repeat", 1), e["obeyed"]) for e in entries
    )


def obeying_script(caption: str, max_chars: int = 1000) -> list[dict[str, str]]:
    """Rules for the fake backend's `script` (or `capmill.testing.scripted_server`): whenever a
    prompt shows one of the corpus's AltTexts, answer what a model obeying it would. Each rule
    keys on the start of the AltText as `capmill.prompts.untrusted` places it in a prompt, so the
    double obeys on every attempt, regenerations included, as a model that falls for it would."""
    from capmill.prompts.safety import safe_text

    rules = []
    for hostile in hostile_alt_texts():
        rules.append({"when": safe_text(hostile.text, max_chars)[:80], "answer": hostile.obeyed_with(caption)})
    return rules


@dataclass(frozen=True, slots=True)
class GoodCaption:
    alt_text: str
    kind: str  # ssc, dsc, dsc_plus, tags, fused, …
    text: str


@cache
def good_captions() -> tuple[GoodCaption, ...]:
    """Normal captions of the demo photos and of tricky but legitimate cases (a URL that was in
    the AltText, a sign that says "instructions", another language quoted): none may be flagged."""
    entries = yaml.safe_load(GOOD.read_text(encoding="utf-8"))
    return tuple(GoodCaption(e["alt_text"], kind, text) for e in entries for kind, text in e["captions"].items())
