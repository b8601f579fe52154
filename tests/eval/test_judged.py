"""The judged metrics on scripted models: OpenCHAIR (objects listed, each checked against the
references), fact precision / recall / F1 (facts listed, verified against the image or the
references, recall credited once per reference fact, correct extras widening the denominator),
and the pairwise arena (positions drawn per sample and recorded, verdicts read from the reply,
unreadable ones reported and not counted, a bootstrap interval, lengths beside it)."""

import math
import re

import pytest
from PIL import Image

from capmill.backends.base import Answer, Entailment, Generation
from capmill.eval.arena import ArenaConfig, a_first, arena, read_verdict, win_rate_ci
from capmill.eval.facts import Decomposer, FactsConfig, fact_scores, recall
from capmill.eval.openchair import OpenChairConfig, openchair, read_answer

CAPTION = re.compile(r"<caption>\n(.*?)\n</caption>", re.S)


class ScriptedLLM:
    """Test double of a LanguageModel: lists a caption's objects / facts from `lists` (by the
    caption's text), answers OpenCHAIR's question with yes when the object's name occurs in the
    references shown, "no" otherwise, "maybe" for objects named in `unreadable`. Records prompts."""

    model_id = "scripted"

    def __init__(self, lists, unreadable=()):
        self.lists, self.unreadable, self.prompts = lists, set(unreadable), []

    def load(self):
        pass

    def close(self):
        pass

    def chat(self, requests):
        out = []
        for r in requests:
            prompt = r.messages[-1]["content"]
            self.prompts.append(prompt)
            shown = CAPTION.findall(prompt)
            if "According to these descriptions" in prompt:
                obj = re.search(r"is there (.*?) in the image\?", prompt).group(1)
                text = "maybe" if obj in self.unreadable else ("Yes." if obj in shown[0] else "no")
            else:
                items = self.lists.get(shown[0])
                text = "I cannot help." if items is None else ("none" if not items else "\n".join(f"- {i}" for i in items))
            out.append(Generation(texts=[text]))
        return out


def test_openchair_counts_yes_and_no_and_leaves_unsure_out():
    llm = ScriptedLLM({"A dog and a cat on a sofa with a painting.": ["dog", "cat", "sofa", "painting"],
                       "A dog with a frisbee.": ["dog", "frisbee"], "Gibberish": None}, unreadable={"frisbee"})
    refs = {"a": ["A dog lying on a sofa."], "b": ["A dog in a park."], "c": ["x"]}
    result = openchair(["a", "b", "c"], {"f": ["A dog and a cat on a sofa with a painting.", "A dog with a frisbee.",
                                               "Gibberish"]}, refs, llm, OpenChairConfig())
    # a: dog yes, cat no, sofa yes (painting is not asked); b: dog yes, frisbee unreadable
    assert result.metrics["f"]["OpenCHAIR"] == pytest.approx(1 - 1 / 4)
    assert result.metrics["f"]["OpenCHAIR objects"] == 4
    assert result.details["a"]["f"]["openchair"] == {"objects": ["dog", "cat", "sofa"], "hallucinated": ["cat"], "unsure": []}
    assert result.details["b"]["f"]["openchair"]["unsure"] == ["frisbee"]
    assert any("1 answers were not yes, no or unsure" in n for n in result.notes)
    assert any("no object list could be read for 1 captions" in n for n in result.notes)
    assert not any("there painting" in p for p in llm.prompts)


@pytest.mark.parametrize("reply,expected", [("Yes, it is.", "yes"), ("no", "no"), ("It is not there", "no"),
                                            ("Unsure.", "unsure"), ("Probably", None), ("", None)])
def test_openchair_answers(reply, expected):
    assert read_answer(reply) == expected


class FixedVerifier:
    """Test double of an AskingVisionLanguageModel: P(yes) 0.9 for facts containing a word of
    `true`, 0.1 otherwise; no answer for facts containing "error"."""

    model_id = "verifier"

    def __init__(self, true):
        self.true, self.questions = true, []

    def ask(self, requests):
        self.questions.extend(r.question for r in requests)
        out = []
        for r in requests:
            if "error" in r.question:
                out.append(Answer(p_yes=None, error="no answer"))
            else:
                out.append(Answer(p_yes=0.9 if any(w in r.question for w in self.true) else 0.1))
        return out


STOP = {"a", "an", "the", "is", "are", "there", "on"}


class WordNli:
    """Test double of an EntailmentModel: entailment when every content word of the hypothesis is
    in the premise, contradiction when the hypothesis says "purple", neutral otherwise."""

    model_id = "nli"

    def entail(self, pairs):
        out = []
        for premise, hypothesis in pairs:
            words = [w for w in re.findall(r"\w+", hypothesis.lower()) if w not in STOP]
            if "purple" in words:
                out.append(Entailment(0.0, 0.1, 0.9))
            elif all(w in premise.lower() for w in words):
                out.append(Entailment(0.9, 0.1, 0.0))
            else:
                out.append(Entailment(0.1, 0.8, 0.1))
        return out


FACT_LISTS = {
    "A brown dog runs on grass near a red ball.": ["a dog is there", "the dog is brown", "the dog runs on grass",
                                                   "a ball is there", "the ball is red"],
    "A dog.": ["a dog is there"],
    "A sleeping dog, a ball.": ["a dog is there", "a ball is there", "the dog is sleeping"],
    "A purple dog.": ["a dog is there", "the dog is purple"],
}


def test_fact_precision_against_the_image_and_recall_with_extras():
    refs = {"k": ["A dog.", "A sleeping dog, a ball."]}
    decompose = Decomposer(ScriptedLLM(FACT_LISTS), FactsConfig())
    image = Image.new("RGB", (8, 8))
    verifier = FixedVerifier(true=["dog is there", "brown", "grass", "ball is there"])
    result = fact_scores(["k"], {"f": ["A brown dog runs on grass near a red ball."]}, refs, decompose,
                         lambda k: image, verifier=verifier, nli=WordNli())
    m = result.metrics["f"]
    assert m["fact_precision"] == pytest.approx(4 / 5)  # "the ball is red" is not in the image
    # reference facts (deduplicated): a dog is there, a ball is there, the dog is sleeping → the
    # caption entails the first two; "the dog is brown" and "the dog runs on grass" are verified
    # by the image and not stated by the references: correct extras.
    assert m["fact_recall"] == pytest.approx(recall(2, 3, 2)) == pytest.approx(4 / 5)
    assert m["fact_F1"] == pytest.approx(0.8)
    detail = result.details["k"]["f"]["facts"]
    assert [(d["fact"], d["verdict"]) for d in detail["facts"]][-1] == ("the ball is red", "hallucinated")
    assert detail["reference_facts"] == 3 and detail["covered"] == ["a ball is there", "a dog is there"] and detail["extra"] == 2
    assert len(verifier.questions) == 5 and all("<caption>" in q for q in verifier.questions)


def test_fact_precision_against_references_by_nli():
    decompose = Decomposer(ScriptedLLM(FACT_LISTS), FactsConfig())
    result = fact_scores(["k"], {"f": ["A purple dog."]}, {"k": ["A dog."]}, decompose, lambda k: None, nli=WordNli())
    verdicts = [d["verdict"] for d in result.details["k"]["f"]["facts"]["facts"]]
    assert verdicts == ["verified", "hallucinated"]  # entailed; contradicted
    assert result.metrics["f"]["fact_precision"] == 0.5 and result.metrics["f"]["fact_recall"] == 1.0


def test_facts_without_a_way_to_verify_say_so():
    decompose = Decomposer(ScriptedLLM(FACT_LISTS), FactsConfig())
    result = fact_scores(["k"], {"f": ["A dog."]}, None, decompose, lambda k: None)
    assert result.metrics == {} and "--verifier" in result.notes[0]


def test_decomposer_asks_each_text_once():
    llm = ScriptedLLM(FACT_LISTS)
    decompose = Decomposer(llm, FactsConfig())
    assert decompose(["A dog.", "A dog.", "A purple dog."]) == [["a dog is there"]] * 2 + [["a dog is there", "the dog is purple"]]
    decompose(["A dog."])
    assert len(llm.prompts) == 2


class ScriptedJudge:
    """Test double of a VisionLanguageModel judge: prefers the caption with more words, says tie on
    equal length, and writes no verdict for captions containing "???". Records prompts."""

    model_id = "judge"

    def __init__(self):
        self.requests = []

    def generate(self, requests):
        out = []
        for r in requests:
            self.requests.append(r)
            one, two = CAPTION.findall(r.prompt)[:2]
            if "???" in one + two:
                text = "Both are fine, I think."
            else:
                n1, n2 = len(one.split()), len(two.split())
                text = "Reasons.\nVerdict: " + ("1" if n1 > n2 else "2" if n2 > n1 else "tie")
            out.append(Generation(texts=[text]))
        return out


def test_arena_positions_verdicts_and_win_rate():
    keys = [f"k{i}" for i in range(40)]
    a = {k: "a long detailed caption of the scene" for k in keys}
    b = {k: "short caption" for k in keys}
    b["k1"] = "a long detailed caption of this scene"  # tie
    b["k2"] = "??? unreadable"
    judge = ScriptedJudge()
    image = Image.new("RGB", (8, 8))
    result = arena(keys, lambda k: image, a, b, {"k0": ["a reference"]}, judge, ArenaConfig(bootstrap=200), seed=3,
                   names=("run:a", "run:b"))
    firsts = [a_first(3, k) for k in keys]
    assert 5 < sum(firsts) < 35  # both orders are used
    for k, r in zip(keys, judge.requests, strict=True):
        shown = CAPTION.findall(r.prompt)
        assert (shown[0] == a[k]) == a_first(3, k)  # the order drawn is the order shown
        assert result.details[k]["position"] == (1 if a_first(3, k) else 2)
    assert "a reference" in judge.requests[0].prompt and "a reference" not in judge.requests[3].prompt
    m = result.metrics
    assert m["A"]["arena judged"] == 39 and m["A"]["arena unparsed"] == 1 and m["A"]["arena ties"] == 1
    assert m["A"]["win_rate"] == pytest.approx((38 + 0.5) / 39)
    assert m["B"]["win_rate"] == pytest.approx(1 - m["A"]["win_rate"])
    assert m["A"]["win_rate_ci_low"] <= m["A"]["win_rate"] <= m["A"]["win_rate_ci_high"]
    assert m["B"]["win_rate_ci_low"] == pytest.approx(1 - m["A"]["win_rate_ci_high"])
    assert m["A"]["arena words (mean)"] == 7 and m["B"]["arena words (mean)"] < 3
    assert result.details["k1"]["verdict"] == "tie" and result.details["k2"]["verdict"] == "unparsed"
    assert any("1 of 40 verdicts could not be read" in n for n in result.notes)


@pytest.mark.parametrize("reply,expected", [
    ("blah\nVerdict: 2", "2"), ("Verdict: 1\n...\nVerdict: tie", "tie"), ("Judgment: Caption 1 is better", "1"),
    ("Caption 2 is better.", "2"), ("Caption 1 is better than... no, Caption 2 is better", None), ("Hmm", None),
    ("**Verdict:** 1", "1"),
])
def test_arena_verdicts(reply, expected):
    assert read_verdict(reply) == expected


def test_bootstrap_interval():
    rate, low, high = win_rate_ci([1] * 60 + [-1] * 40, 2000, 0.95, 0)
    assert rate == 0.6 and 0.49 < low < 0.52 and 0.68 < high < 0.71  # ±1.96·√(.24/100)
    assert win_rate_ci([1, 1], 0, 0.95, 0)[0] == 1.0 and math.isnan(win_rate_ci([1], 100, 0.95, 0)[1])
