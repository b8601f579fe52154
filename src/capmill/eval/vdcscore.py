"""VDCscore: how much of a reference video description a candidate caption gets right.

AuroraCap (Chai et al., "AuroraCap: Efficient, Performant Video Detailed Captioning and a New
Benchmark", ICLR 2025) scores detailed video captions by question answering rather than n-gram
overlap: a language model turns the reference caption into short question–answer pairs, answers
every question from the candidate caption alone, and judges each predicted answer against the
correct one (yes/no and a 0–5 score). VDCscore is the mean score, VDC accuracy the share of
"yes". Every sample and every question counts: the published evaluation script leaves out
samples whose mean score or accuracy is 0, which inflates both; this does not.

The questions depend on the references only, so they are asked once and reused for every field.
Each step is one batched chat call. Replies that cannot be parsed are counted and reported, not
scored as zero. References and captions reach the prompts delimited as untrusted text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from capmill.backends.base import GenerationParams, LanguageModel
from capmill.components import BackendSpec, Strict
from capmill.prompts import load_template
from capmill.prompts.safety import delimited_caption


class VdcScoreConfig(Strict):
    # The language model that writes the questions, answers them and judges the answers.
    judge: BackendSpec
    # Question-answer pairs per reference (the benchmark's own sets have about 20).
    questions: int = Field(10, ge=1, le=50)
    question_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=1024))
    answer_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=48))
    judge_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=32))


@dataclass
class VdcResult:
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # key → [(question, answer)]: what the references were turned into.
    questions: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


_PAIR = re.compile(r"^\s*(?:\d+[.)]\s*)?(?:Q(?:uestion)?\s*[:.-])\s*(?P<q>.+?)\s*(?:\||\s)\s*A(?:nswer)?\s*[:.-]\s*(?P<a>.+)$",
                   re.IGNORECASE)


def parse_qa_pairs(text: str) -> list[tuple[str, str]]:
    """Question–answer pairs from a reply: JSON objects (one per line, or a JSON list) with
    `question` and `answer`, or "Q: … A: …" lines (the answer may be on the next line)."""
    pairs: list[tuple[str, str]] = []
    text = text.strip()
    try:
        whole = json.loads(text)
        items = whole if isinstance(whole, list) else [whole]
        found = [(str(i["question"]).strip(), str(i["answer"]).strip()) for i in items
                 if isinstance(i, dict) and i.get("question") and i.get("answer")]
        if found:
            return found
    except (ValueError, TypeError):
        pass
    pending_q = None
    for line in text.splitlines():
        line = line.strip().strip(",")
        if not line:
            continue
        if line.startswith("{"):
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and item.get("question") and item.get("answer"):
                pairs.append((str(item["question"]).strip(), str(item["answer"]).strip()))
            continue
        match = _PAIR.match(line)
        if match:
            pairs.append((match.group("q").strip(), match.group("a").strip()))
            pending_q = None
            continue
        head = re.match(r"^\s*(?:\d+[.)]\s*)?(Q(?:uestion)?|A(?:nswer)?)\s*[:.-]\s*(.+)$", line, re.IGNORECASE)
        if head and head.group(1)[0].lower() == "q":
            pending_q = head.group(2).strip()
        elif head and pending_q:
            pairs.append((pending_q, head.group(2).strip()))
            pending_q = None
    return pairs


def parse_verdict(text: str) -> tuple[bool, float] | None:
    """(match, score 0–5) from a judge's reply: a JSON object with match/pred and score, or the
    first yes/no and the first number in the text; None when either is missing."""
    text = text.strip()
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        chunk = text[start:end + 1].replace("'", '"')
        try:
            obj = json.loads(chunk)
            verdict = str(obj.get("match", obj.get("pred", ""))).strip().lower()
            score = float(obj["score"])
            if verdict in ("yes", "no") and 0 <= score <= 5:
                return verdict == "yes", score
        except (ValueError, TypeError, KeyError):
            pass
    verdict_match = re.search(r"\b(yes|no)\b", text, re.IGNORECASE)
    number = re.search(r"\b([0-5](?:\.\d+)?)\b", text)
    if verdict_match is None or number is None:
        return None
    return verdict_match.group(1).lower() == "yes", float(number.group(1))


def vdc_score(keys: list[str], candidates: dict[str, list[str | None]], references: dict[str, list[str]],
              config: VdcScoreConfig, judge: Any = None) -> VdcResult:
    """VDCscore and VDC accuracy of every field in `candidates` (field → text per key, in the
    order of `keys`) against the first reference of each key."""
    from capmill.backends.base import require
    from capmill.verify.steps import chat_request

    result = VdcResult(metrics={name: {} for name in candidates})
    owned = judge is None
    if owned:
        judge = require(config.judge.build(), LanguageModel, "VDCscore's judge")
        judge.load()
    ask = load_template("eval", "vdcscore_questions")
    answer = load_template("eval", "vdcscore_answer")
    grade = load_template("eval", "vdcscore_judge")
    try:
        scored = [k for k in keys if references.get(k)]
        if len(scored) < len(keys):
            result.notes.append(f"VDCscore: {len(keys) - len(scored)} samples have no reference (left out)")
        requests = [chat_request(ask, {"reference": delimited_caption(references[k][0], 8000), "count": config.questions},
                                 config.question_params, f"{k}:vdc_questions") for k in scored]
        unparsed = 0
        for key, gen in zip(scored, judge.chat(requests) if requests else [], strict=True):
            pairs = parse_qa_pairs(gen.texts[0]) if gen.ok else []
            if not pairs:
                unparsed += 1
                continue
            result.questions[key] = pairs[: config.questions]
        if unparsed:
            result.notes.append(f"VDCscore: no question could be read from the judge's reply for {unparsed} references "
                                "(those samples are left out)")
        for name, texts in candidates.items():
            _score_field(name, dict(zip(keys, texts, strict=True)), result, judge, config, answer, grade)
    finally:
        if owned:
            judge.close()
    return result


def _score_field(name, texts: dict[str, str | None], result: VdcResult, judge, config, answer, grade) -> None:
    from capmill.verify.steps import chat_request

    items = [(k, q, a) for k, pairs in result.questions.items() if texts.get(k) for q, a in pairs]
    missing = sum(1 for k in result.questions if not texts.get(k))
    if missing:
        result.notes.append(f"VDCscore {name}: {missing} samples have no {name} caption (left out)")
    if not items:
        result.metrics[name].update({"VDCscore": float("nan"), "VDC accuracy": float("nan")})
        return
    asked = [chat_request(answer, {"candidate": delimited_caption(texts[k], 8000), "question": q}, config.answer_params,
                          f"{k}:vdc_answer") for k, q, _ in items]
    predicted = [g.texts[0].strip() if g.ok and g.texts else "" for g in judge.chat(asked)]
    judged = [chat_request(grade, {"question": q, "answer": delimited_caption(a, 500), "predicted": delimited_caption(p, 500)},
                           config.judge_params, f"{k}:vdc_judge") for (k, q, a), p in zip(items, predicted, strict=True)]
    verdicts = [parse_verdict(g.texts[0]) if g.ok and g.texts else None for g in judge.chat(judged)]
    good = [v for v in verdicts if v is not None]
    bad = len(verdicts) - len(good)
    if bad:
        result.notes.append(f"VDCscore {name}: {bad} of {len(verdicts)} verdicts could not be read (not counted)")
    per_key: dict[str, list[tuple[bool, float]]] = {}
    for (key, _, _), verdict in zip(items, verdicts, strict=True):
        if verdict is not None:
            per_key.setdefault(key, []).append(verdict)
    if not per_key:
        result.metrics[name].update({"VDCscore": float("nan"), "VDC accuracy": float("nan")})
        return
    # Per sample first, then the mean over samples: every video weighs the same.
    scores = [sum(s for _, s in v) / len(v) for v in per_key.values()]
    accuracy = [sum(m for m, _ in v) / len(v) for v in per_key.values()]
    result.metrics[name].update({"VDCscore": sum(scores) / len(scores), "VDC accuracy": sum(accuracy) / len(accuracy),
                                 "VDC questions": float(len(good))})
