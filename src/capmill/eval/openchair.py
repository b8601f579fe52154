"""OpenCHAIR: open-vocabulary object hallucination, judged against the reference captions.

Ben-Kish et al., "Mitigating Open-Vocabulary Caption Hallucinations" (EMNLP 2024); reference
implementation assafbk/mocha_code `OpenCHAIR/evaluate.py`, `utils.py`. The concrete objects a
caption names are listed, and a language model asks, for each, whether the image's reference
captions say it is there (yes / no / unsure). Objects the reference leaves aside as depictions
("painting", "drawing", "photo", "picture", "portrait", "photograph") are not asked about.

    OpenCHAIR = 1 − no / (yes + no)

over every asked object of the set: "unsure" answers are not counted, as in the reference, and
replies that say none of the three are reported, not counted. The paper reports the
hallucination rate no / (yes + no), lower is better; capmill reports its complement so that, like
every other score here but CHAIR, higher is better.

Differences: the reference lists a caption's objects with spaCy (its nouns whose concreteness in
Brysbaert et al.'s ratings exceeds 4.5, a lexicon not bundled here); capmill asks the language
model for the concrete objects, with one prompt (`prompts/eval/openchair_objects.yaml`). The
check prompt is capmill's own (`openchair_check.yaml`). The reference benchmark has one
reference caption per image; with several, all are shown together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from capmill.backends.base import GenerationParams
from capmill.components import Strict
from capmill.prompts import load_template
from capmill.prompts.safety import delimited_caption, safe_text

IGNORED = ("painting", "drawing", "photo", "picture", "portrait", "photograph")
_ANSWER = re.compile(r"\b(yes|no|not|unsure)\b", re.IGNORECASE)


class OpenChairConfig(Strict):
    extract_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=256))
    check_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=8))
    max_objects: int = Field(30, ge=1)
    ignored: list[str] = Field(default_factory=lambda: list(IGNORED))


def read_answer(text: str | None) -> str | None:
    """"yes", "no" or "unsure" from a reply (the first of these words; "not" reads as no), or None."""
    found = _ANSWER.search(text or "")
    if found is None:
        return None
    word = found.group(1).lower()
    return "no" if word == "not" else word


@dataclass
class OpenChairResult:
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    details: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def openchair(keys: list[str], texts: dict[str, list[str | None]], references: dict[str, list[str]], llm: Any,
              config: OpenChairConfig) -> OpenChairResult:
    """OpenCHAIR of every field (module docstring); `llm` is a loaded LanguageModel."""
    from capmill.eval.facts import read_list
    from capmill.verify.steps import chat_parsed, chat_request

    extract = load_template("eval", "openchair_objects").check_slots({"caption"})
    check = load_template("eval", "openchair_check").check_slots({"references", "object"})
    result = OpenChairResult()
    ignored = {w.lower() for w in config.ignored}
    answers: dict[tuple[str, str], str | None] = {}  # (key, object) → answer, asked once for every field
    for name, column in texts.items():
        rows = [(k, t) for k, t in zip(keys, column, strict=True) if t is not None and references.get(k)]
        if not rows:
            continue
        requests = [chat_request(extract, {"caption": delimited_caption(t, 8000)}, config.extract_params,
                                 f"{k}:openchair_objects") for k, t in rows]
        parsed = chat_parsed(llm, requests, lambda s: read_list(s, config.max_objects, 6),
                             extract.options.get("retry_note", ""))
        objects: dict[str, list[str]] = {}
        unread = 0
        for (key, _), p in zip(rows, parsed, strict=True):
            if p.value is None:
                unread += 1
                continue
            objects[key] = [o.lower().rstrip(".") for o in p.value if o.lower().rstrip(".") not in ignored]
        if unread:
            result.notes.append(f"OpenCHAIR {name}: no object list could be read for {unread} captions (left out)")
        todo = sorted({(k, o) for k, objs in objects.items() for o in objs if (k, o) not in answers})
        if todo:
            asked = [chat_request(check, {"references": delimited_caption("\n".join(references[k]), 8000),
                                          "object": safe_text(o, 80)}, config.check_params, f"{k}:openchair_check")
                     for k, o in todo]
            for item, gen in zip(todo, llm.chat(asked), strict=True):
                answers[item] = read_answer(gen.texts[0]) if gen.ok else None
        yes = no = unsure = unreadable = 0
        for key, objs in objects.items():
            verdicts = [answers[(key, o)] for o in objs]
            yes += verdicts.count("yes")
            no += verdicts.count("no")
            unsure += verdicts.count("unsure")
            unreadable += verdicts.count(None)
            result.details.setdefault(key, {}).setdefault(name, {})["openchair"] = {
                "objects": objs, "hallucinated": [o for o, v in zip(objs, verdicts, strict=True) if v == "no"],
                "unsure": [o for o, v in zip(objs, verdicts, strict=True) if v in ("unsure", None)]}
        if unreadable:
            result.notes.append(f"OpenCHAIR {name}: {unreadable} answers were not yes, no or unsure (not counted)")
        metrics = result.metrics.setdefault(name, {})
        metrics["OpenCHAIR"] = 1 - no / (yes + no) if yes + no else float("nan")
        metrics["OpenCHAIR objects"] = float(yes + no + unsure)
        if not yes + no and objects:
            result.notes.append(f"OpenCHAIR {name}: no object got a yes or no answer")
    return result
