"""The judge stage: seeded, recorded orders; strict verdicts with one retry; position bias; grades."""

import math

import pytest
from PIL import Image

from capmill.backends.base import Generation
from capmill.config import parse_config
from capmill.run import run
from capmill.sample import TRANSIENT_ERROR, Caption, ImageRef, Sample
from capmill.stages.base import RunContext
from capmill.stages.judge import JudgeStageConfig
from capmill.verdicts import bias_rate, pair_orders, permutation
from tests.conftest import make_config

TEXTS = ["a cat on a mat", "XBEST a dog on a beach", "a bird on a wire", "a fish in a bowl"]


def _sample(key="k", texts=TEXTS, alt="web text of the image"):
    sample = Sample(key=key, image=ImageRef(image=Image.new("RGB", (32, 32), (10, 200, 10))), alt_text=alt)
    for i, text in enumerate(texts):
        sample.captions[f"cand.{i}"] = Caption(text=text, source=f"cand.{i}", model=f"m{i}", prompt_id="ssc@1")
    return sample


def _stage(backend, **config):
    stage = JudgeStageConfig.model_validate({"backend": backend, **config}).build()
    stage.setup(RunContext())
    return stage


# A fair judge: it names the position of the candidate that starts with XBEST, wherever it is shown.
FAIR = {"type": "fake", "script": [{"when": f"Caption {p}:\n<caption>\nXBEST", "answer": str(p)} for p in range(1, 5)]}
# A judge with a position bias: always the first.
FIRST = {"type": "fake", "script": [{"when": "Caption 1:", "answer": "1"}]}


def test_the_order_shown_is_the_seeded_permutation_and_is_recorded():
    stage = _stage(FAIR, seed=7)
    samples = [_sample(f"key{i}") for i in range(6)]
    stage.process(samples)
    for sample in samples:
        judged = sample.captions["judged"]
        expected = [f"cand.{i}" for i in permutation(7, sample.key, 4)]
        assert judged.meta["order"] == expected
        assert judged.text == TEXTS[1] and judged.meta["chosen"] == "cand.1" and judged.model == "m1"
        assert judged.meta["verdict"] == expected.index("cand.1") + 1 and not judged.meta["retried"]
        assert [t["name"] for t in judged.meta["top"]][0] == "cand.1" and len(judged.meta["top"]) == 4
    # the prompt numbered the candidates in that order, each delimited as untrusted text
    prompt = stage.backend.prompts[0]
    order = samples[0].captions["judged"].meta["order"]
    for position, name in enumerate(order, 1):
        assert f"Caption {position}:\n<caption>\n{TEXTS[int(name[-1])]}\n</caption>" in prompt
    # the same seed gives the same orders in a new stage; another seed other ones
    again = [_sample(f"key{i}") for i in range(6)]
    _stage(FAIR, seed=7).process(again)
    assert [s.captions["judged"].meta["order"] for s in again] == [s.captions["judged"].meta["order"] for s in samples]
    other = [_sample(f"key{i}") for i in range(6)]
    _stage(FAIR, seed=8).process(other)
    assert [s.captions["judged"].meta["order"] for s in other] != [s.captions["judged"].meta["order"] for s in samples]


def test_an_unparsed_verdict_is_asked_once_more_then_recorded_as_none():
    retried = _stage({"type": "fake", "responses": ["Caption 2 is clearly the best one.", "2"]})
    sample = retried.process([_sample()])[0]
    judged = sample.captions["judged"]
    order = judged.meta["order"]
    assert judged.meta["retried"] and judged.meta["verdict"] == 2 and judged.meta["chosen"] == order[1]
    assert judged.meta["first_answer"].startswith("Caption 2 is") and "fallback" not in judged.meta
    assert retried.backend.batch_sizes == [1, 1]
    assert "single number from 1 to 4" in retried.backend.prompts[-1]
    never = _stage({"type": "fake", "responses": ["I cannot choose.", "Maybe 2 or 3?"]})
    sample = never.process([_sample()])[0]
    judged = sample.captions["judged"]
    assert judged.meta["verdict"] is None and judged.meta["fallback"] == "no_verdict" and judged.meta["retried"]
    assert judged.meta["chosen"] == "cand.0"  # the first candidate in order wins when there is no verdict


def test_position_bias_is_measured_by_judging_the_reverse_order():
    fair = [_sample(f"k{i}") for i in range(8)]
    _stage(FAIR, bias_check=1.0).process(fair)
    assert bias_rate(s.captions["judged"].meta["position_bias"] for s in fair) == (0.0, 8)
    biased = [_sample(f"k{i}") for i in range(8)]
    _stage(FIRST, bias_check=1.0).process(biased)
    assert bias_rate(s.captions["judged"].meta["position_bias"] for s in biased) == (1.0, 8)
    check = biased[0].captions["judged"].meta["position_bias"]
    assert check["order"] == biased[0].captions["judged"].meta["order"][::-1]
    # the check runs on the configured share only
    some = [_sample(f"k{i}") for i in range(40)]
    _stage(FAIR, bias_check=0.25).process(some)
    checked = sum("position_bias" in s.captions["judged"].meta for s in some)
    assert 3 <= checked <= 20


def test_pairwise_ranks_by_wins_and_checks_both_orientations():
    # prefers whichever caption holds XBEST; between two others, a tie
    script = [{"when": "Caption 1:\n<caption>\nXBEST", "answer": "1"},
              {"when": "Caption 2:\n<caption>\nXBEST", "answer": "2"},
              {"when": "Caption 1:", "answer": "tie"}]
    stage = _stage({"type": "fake", "script": script}, mode="pairwise", bias_check=1.0, seed=3)
    sample = stage.process([_sample(texts=TEXTS[:3])])[0]
    judged = sample.captions["judged"]
    assert judged.meta["chosen"] == "cand.1" and judged.meta["wins"] == {"cand.0": 0.5, "cand.1": 2.0, "cand.2": 0.5}
    assert [t["name"] for t in judged.meta["top"]] == ["cand.1", "cand.0", "cand.2"]
    shown = [p["shown"] for p in judged.meta["pairs"] if not p.get("bias_check")]
    assert shown == [[f"cand.{a}", f"cand.{b}"] for a, b in pair_orders(3, "k", 3)]
    assert judged.meta["position_bias"] == {"compared": 3, "agree": 3}
    assert stage.backend.batch_sizes == [6]  # every pair, both orientations, one call


def test_grade_mode_stores_scores_and_no_verdict_as_nan():
    stage = _stage({"type": "fake", "script": [{"when": "web text of the image", "answer": "4"}]},
                   mode="grade", candidates=["alt_text", "cand.0"])
    sample = stage.process([_sample()])[0]
    assert sample.scores["grade:alt_text"] == 4.0 and math.isnan(sample.scores["grade:cand.0"])
    verdict = sample.meta["verdicts"]["grade:cand.0"]
    assert verdict["verdict"] is None and verdict["retried"]
    assert "judged" not in sample.captions


def test_a_text_only_judge_chats_and_a_single_candidate_wins_without_asking():
    stage = _stage({"type": "fake", "script": [{"when": "XBEST", "answer": "1"}]}, image=False,
                   candidates=["cand.1", "cand.0"])
    sample = stage.process([_sample()])[0]
    assert sample.captions["judged"].meta["chosen"] in ("cand.1", "cand.0")
    assert stage.backend.prompts[0].startswith("system: You compare image captions.")
    lone = _stage(FAIR)
    single = lone.process([_sample(texts=["only one"])])[0]
    assert single.captions["judged"].text == "only one" and single.captions["judged"].meta["single_candidate"]
    assert lone.backend.batch_sizes == []


def test_a_transient_failure_leaves_the_sample_retryable(monkeypatch):
    stage = _stage(FAIR)
    monkeypatch.setattr(stage.backend, "generate", lambda reqs: [Generation(error="down", transient=True) for _ in reqs])
    sample = stage.process([_sample()])[0]
    assert sample.status == TRANSIENT_ERROR and "judged" not in sample.captions


def test_config_rules():
    with pytest.raises(ValueError, match="grade mode grades named texts"):
        JudgeStageConfig.model_validate({"backend": {"type": "fake"}, "mode": "grade"})
    from capmill.backends.base import LanguageModel, VisionLanguageModel

    assert JudgeStageConfig.model_validate({"backend": {"type": "fake"}}).backend_roles() == {"backend": VisionLanguageModel}
    assert JudgeStageConfig.model_validate({"backend": {"type": "fake"}, "image": False}).backend_roles() == {
        "backend": LanguageModel}


def test_grades_filter_a_run(tmp_path, wds):
    """MLBCAP's first step as parts: grade the AltText, drop the low grades."""
    grader = {"type": "fake", "script": [{"when": "Cup of coffee", "answer": "2"}, {"when": "tabby cat", "answer": "nope"},
                                         {"when": "Rate how well", "answer": "5"}]}
    stages = [{"type": "judge", "name": "quality", "mode": "grade", "candidates": ["alt_text"], "backend": grader},
              {"type": "filter", "rules": [{"score": "quality:alt_text", "min": 3}]}]
    config = parse_config(make_config(tmp_path / "data", tmp_path / "out", stages=stages,
                                      reliability={"fail_at_drop_share": 2}))
    assert run(config, progress=False).ok
    import json

    stats = json.loads((tmp_path / "out" / "_stats" / "00000.json").read_text())
    assert stats["drops"] == {"filter: quality:alt_text < 3": 1, "filter: quality:alt_text missing": 1}
