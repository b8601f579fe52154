"""Fact precision, recall and F1: how many of a caption's primitive facts are true, and how many
of the references' facts it states (DCScore / DNLI style).

DCScore (Ye et al., "Painting with Words: Elevating Detailed Image Captioning with Benchmark and
Alignment Learning", ICLR 2025) splits a caption into primitive information units with an LLM and
checks each; DNLI-style evaluation checks such facts by natural language inference against
reference descriptions. Here:

1. a language model (the judge) splits each caption, and each reference caption, into primitive
   facts (`prompts/eval/facts_decompose.yaml`; read with the verifying stages' list parser);
2. each caption fact gets a verdict: against the image by a vision-language model's `ask`
   (P(yes) ≥ `threshold`: verified, else hallucinated) when a verifier is configured; otherwise
   against the references by an NLI model (premise: the references; entailment: verified,
   contradiction: hallucinated, neutral: unverified);
3. precision = verified / facts; recall (needs the NLI model and references) credits each
   reference fact once, when the caption entails it (premise: the caption); facts the image
   verified that the references do not state are correct extra facts: they count as recalled and
   widen the denominator, so a reference that leaves things out does not punish a caption for
   saying more: recall = (covered + extra) / (reference facts + extra);
4. F1 = 2PR / (P + R) per sample; the set's figures are the means over samples.

Reference facts are deduplicated by their lower-cased text (several references repeat each other).
Facts the verifier could not answer are left out of that sample's figures and counted in a note.
No NLI weights ship with capmill: `--nli '{type: nli, model: PATH}'` names a downloaded checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import Field

from capmill.backends.base import AskRequest, ChatRequest, GenerationParams
from capmill.components import Strict
from capmill.prompts import load_template
from capmill.prompts.safety import delimited_caption, untrusted

VERIFIED, HALLUCINATED, UNVERIFIED = "verified", "hallucinated", "unverified"


class FactsConfig(Strict):
    decompose_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=512))
    max_facts: int = Field(40, ge=1)
    # P(yes) at or above which the verifier's answer verifies a fact.
    threshold: float = Field(0.5, ge=0, le=1)
    # Characters of reference text an NLI premise keeps (NLI models read about 512 tokens).
    max_premise_chars: int = Field(2000, ge=100)
    # Samples whose facts go to the verifier in one `ask` call (their images are held meanwhile).
    images_per_call: int = Field(16, ge=1)


@dataclass
class FactsResult:
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    details: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def read_list(text: str | None, max_items: int, max_words: int) -> list[str] | None:
    """The items of a listing reply (the verifying stages' list parser), or None when the reply
    is a refusal rather than a list (a refusal is no list of one object or fact)."""
    import re

    from capmill.guards.patterns import DEFAULT_REFUSALS, REFUSAL_ANYWHERE
    from capmill.verify.parse import parse_items

    head = (text or "").strip().lower().replace("’", "'")[:200]
    if any(re.match(p, head) for p in DEFAULT_REFUSALS) or REFUSAL_ANYWHERE.search(head):
        return None
    return parse_items(text, max_items, max_words=max_words)


def recall(covered: int, reference_facts: int, extra: int) -> float:
    return (covered + extra) / (reference_facts + extra) if reference_facts + extra else float("nan")


def f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


class Decomposer:
    """Texts → primitive facts through the judge, each text asked once per evaluation."""

    def __init__(self, llm: Any, config: FactsConfig):
        self.llm, self.config = llm, config
        self.template = load_template("eval", "facts_decompose").check_slots({"caption"})
        self.facts: dict[str, list[str] | None] = {}

    def __call__(self, texts: list[str]) -> list[list[str] | None]:
        from capmill.verify.steps import chat_parsed

        todo = list(dict.fromkeys(t for t in texts if t not in self.facts))
        if todo:
            t = self.template
            requests = []
            for i, text in enumerate(todo):
                slots = {"caption": delimited_caption(text, 8000)}
                messages = ([{"role": "system", "content": t.render_system(**slots)}] if t.system else [])
                messages.append({"role": "user", "content": t.render(**slots)})
                requests.append(ChatRequest(messages=messages, params=self.config.decompose_params, tag=f"fact{i}"))
            parsed = chat_parsed(self.llm, requests, lambda s: read_list(s, self.config.max_facts, 40),
                                 t.options.get("retry_note", ""))
            for text, p in zip(todo, parsed, strict=True):
                self.facts[text] = p.value
        return [self.facts[t] for t in texts]


def fact_scores(keys: list[str], texts: dict[str, list[str | None]], references: dict[str, list[str]] | None,
                decompose: Decomposer, image_of: Callable[[str], Any], verifier: Any = None, nli: Any = None,
                config: FactsConfig | None = None) -> FactsResult:
    """Fact precision / recall / F1 of every field (module docstring)."""
    config = config or FactsConfig()
    result = FactsResult()
    references = references or {}
    if verifier is None and not (nli is not None and references):
        result.notes.append("fact precision needs a verifier that answers yes/no about the image "
                            "(--verifier, an AskingVisionLanguageModel) or an NLI model (--nli) with references: not computed")
        return result
    ref_facts: dict[str, list[str]] = {}
    if nli is not None and references:
        scored = [k for k in keys if references.get(k)]
        flat = [(k, r) for k in scored for r in references[k]]
        for (k, _), facts in zip(flat, decompose([r for _, r in flat]), strict=True):
            seen = ref_facts.setdefault(k, [])
            for f in facts or []:
                if f.lower() not in {s.lower() for s in seen}:
                    seen.append(f)
    elif verifier is not None:
        result.notes.append("fact recall needs an NLI model (--nli) and references: only fact precision is computed")
    check = load_template("eval", "facts_check").check_slots({"fact"})
    for name, column in texts.items():
        rows = [(k, t) for k, t in zip(keys, column, strict=True) if t is not None]
        if verifier is None:
            rows = [(k, t) for k, t in rows if references.get(k)]
        if rows:
            _score_field(name, rows, decompose, image_of, verifier, nli, references, ref_facts, check, config, result)
    return result


def _premise(texts: list[str], config: FactsConfig) -> str:
    return " ".join(texts)[: config.max_premise_chars]


def _score_field(name, rows, decompose, image_of, verifier, nli, references, ref_facts, check, config, result) -> None:
    facts_of = dict(zip([k for k, _ in rows], decompose([t for _, t in rows]), strict=True))
    unread = [k for k, _ in rows if facts_of[k] is None]
    if unread:
        result.notes.append(f"facts {name}: no fact list could be read for {len(unread)} captions (left out)")
    items = [(k, f) for k, _ in rows for f in (facts_of[k] or [])]
    verdicts: dict[tuple[str, str], tuple[str | None, float | None]] = {}
    if verifier is not None:
        no_image = 0
        by_key: dict[str, list[str]] = {}
        for k, f in items:
            by_key.setdefault(k, []).append(f)
        keys = list(by_key)
        # A chunk of samples at a time: each image decoded once and dropped after its facts are asked.
        for start in range(0, len(keys), config.images_per_call):
            asks, where = [], []
            for k in keys[start:start + config.images_per_call]:
                image = image_of(k)
                if image is None:
                    no_image += len(by_key[k])
                    continue
                for f in by_key[k]:
                    asks.append(AskRequest(image=image, question=check.render(fact=untrusted(f, "caption", 500)),
                                           tag=f"{k}:fact"))
                    where.append((k, f))
            for item, answer in zip(where, verifier.ask(asks) if asks else [], strict=True):
                if answer.ok:
                    verdicts[item] = (VERIFIED if answer.p_yes >= config.threshold else HALLUCINATED, round(answer.p_yes, 4))
        if no_image:
            result.notes.append(f"facts {name}: {no_image} facts of samples without a readable image were not verified")
    else:
        pairs = [(_premise(references[k], config), f) for k, f in items]
        for item, e in zip(items, nli.entail(pairs) if pairs else [], strict=True):
            if e.label is not None:
                verdicts[item] = ({"entailment": VERIFIED, "contradiction": HALLUCINATED}.get(e.label, UNVERIFIED), None)
    unanswered = sum(1 for i in items if i not in verdicts)
    if unanswered:
        result.notes.append(f"facts {name}: {unanswered} of {len(items)} facts got no verdict (left out)")
    covered: dict[str, set[str]] = {}
    extra: dict[str, int] = {}
    if nli is not None and ref_facts:
        text_of = dict(rows)
        asked = [(k, rf) for k, _ in rows if k in ref_facts for rf in ref_facts[k]]
        for (k, rf), e in zip(asked, nli.entail([(text_of[k], rf) for k, rf in asked]) if asked else [], strict=True):
            if e.label == "entailment":
                covered.setdefault(k, set()).add(rf)
        if verifier is not None:  # image-verified facts the references do not state: correct extras
            candidates = [(k, f) for k, f in items if verdicts.get((k, f), (None,))[0] == VERIFIED and k in ref_facts]
            entailed = nli.entail([(_premise(references[k], config), f) for k, f in candidates]) if candidates else []
            for (k, _), e in zip(candidates, entailed, strict=True):
                if e.label is not None and e.label != "entailment":
                    extra[k] = extra.get(k, 0) + 1
    ps, rs, fs = [], [], []
    for k, _ in rows:
        facts = facts_of[k]
        if facts is None:
            continue
        judged = [(f, *verdicts[(k, f)]) for f in facts if (k, f) in verdicts]
        p = sum(v == VERIFIED for _, v, _ in judged) / len(judged) if judged else float("nan")
        r = recall(len(covered.get(k, ())), len(ref_facts[k]), extra.get(k, 0)) if k in ref_facts else float("nan")
        if p == p:
            ps.append(p)
        if r == r:
            rs.append(r)
        if p == p and r == r:
            fs.append(f1(p, r))
        detail = {"facts": [{"fact": f, "verdict": v, **({"p_yes": py} if py is not None else {})} for f, v, py in judged]}
        if k in ref_facts:
            detail.update(reference_facts=len(ref_facts[k]), covered=sorted(covered.get(k, ())), extra=extra.get(k, 0))
        result.details.setdefault(k, {}).setdefault(name, {})["facts"] = detail
    metrics = result.metrics.setdefault(name, {})
    metrics["fact_precision"] = sum(ps) / len(ps) if ps else float("nan")
    if ref_facts:
        metrics["fact_recall"] = sum(rs) / len(rs) if rs else float("nan")
        metrics["fact_F1"] = sum(fs) / len(fs) if fs else float("nan")
    metrics["facts (mean)"] = sum(len(facts_of[k] or []) for k, _ in rows if facts_of[k] is not None) / max(1, len(rows) - len(unread))
