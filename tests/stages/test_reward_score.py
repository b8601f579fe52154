"""Reward scores, and keeping the best share of the input: in the scoring stage (fitted on the
whole input) and in `filter` over scores an earlier run stored."""

import json

import pytest
from PIL import Image

from capmill.backends.fake import FakeBackendConfig
from capmill.config import parse_config
from capmill.errors import ConfigError
from capmill.run import run
from capmill.sample import DROPPED, Caption, ImageRef, Sample
from capmill.stages.base import RunContext
from capmill.stages.filter import FilterRule
from capmill.stages.reward import RewardScoreStageConfig
from tests.conftest import make_config

FAKE = {"type": "fake"}


def _records(out):
    import pyarrow.parquet as pq

    return [json.loads(r) for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).column("record").to_pylist()]


def test_every_field_is_scored_with_its_image_in_one_call():
    stage = RewardScoreStageConfig.model_validate({"backend": FAKE, "fields": ["alt_text", "dsc"]}).build()
    stage.setup(RunContext())
    image = Image.new("RGB", (16, 16), (1, 2, 3))
    sample = Sample(key="k", image=ImageRef(image=image), alt_text="a cat")
    sample.captions["dsc"] = Caption(text="a cat on a mat", source="dsc")
    stage.process([sample, Sample(key="no_alt", image=ImageRef(image=image))])
    fake = FakeBackendConfig().build()
    assert sample.scores["reward:alt_text"] == pytest.approx(float(fake.score(["a cat"], [image])[0]))
    assert sample.scores["reward:dsc"] == pytest.approx(float(fake.score(["a cat on a mat"], [image])[0]))


def test_keep_a_threshold_drops_with_the_rule_as_reason():
    stage = RewardScoreStageConfig.model_validate({"backend": FAKE, "image": False,
                                                   "keep": {"field": "alt_text", "min": 0.5}}).build()
    stage.setup(RunContext())
    fake = FakeBackendConfig().build()
    texts = [f"text {i}" for i in range(20)]
    samples = stage.process([Sample(key=str(i), alt_text=t) for i, t in enumerate(texts)] + [Sample(key="none")])
    for sample, value in zip(samples, fake.score(texts), strict=False):
        assert (sample.status == DROPPED) == (value < 0.5)
        if sample.status == DROPPED:
            assert sample.error == "reward_score: reward:alt_text < 0.5"
    assert samples[-1].status == DROPPED and samples[-1].error == "reward_score: reward:alt_text missing"


def test_keep_the_top_fraction_of_the_whole_input(tmp_path, wds):
    """Compress & Align's rule: the fit scores all 24 AltTexts and keeps the best quarter: 6."""
    stages = [{"type": "reward_score", "backend": FAKE, "keep": {"field": "alt_text", "top_fraction": 0.25}}]
    config = parse_config(make_config(tmp_path / "data", tmp_path / "out", stages=stages,
                                      reliability={"fail_at_drop_share": 2}))
    summary = run(config, progress=False)
    assert summary.ok
    assert any("reward:alt_text top 25%: keeps ≥" in line and "fitted on 24 of 24" in line for line in summary.fits)
    kept = _records(tmp_path / "out")
    assert len(kept) == 6
    stats = [json.loads(p.read_text()) for p in (tmp_path / "out" / "_stats").glob("*.json")]
    assert sum(s["drops"].get("reward_score: reward:alt_text not in the top 25%", 0) for s in stats) == 18
    cutoff = min(r["scores"]["reward:alt_text"] for r in kept)
    state = json.loads(next((tmp_path / "out" / "_fit").glob("reward_score-*.json")).read_text())
    assert state["cutoff"] == pytest.approx(cutoff) and state["fitted_on"] == 24


def test_filter_keeps_a_fitted_share_of_scores_an_earlier_run_stored(tmp_path, wds):
    first = make_config(tmp_path / "data", tmp_path / "scored", stages=[
        {"type": "clip_score", "backend": FAKE, "fields": ["alt_text"], "clipscore": False}])
    assert run(parse_config(first), progress=False).ok
    second = {"input": {"type": "capmill", "path": str(tmp_path / "scored")},
              "output": {"path": str(tmp_path / "half"), "writers": ["parquet"]},
              "reliability": {"fail_at_drop_share": 2},
              "stages": [{"type": "filter", "rules": [{"score": "clip:alt_text", "percentile": 50}]}]}
    summary = run(parse_config(second), progress=False)
    assert summary.ok and any("clip:alt_text ≥ 50th percentile" in line for line in summary.fits)
    assert len(_records(tmp_path / "half")) == 12
    # the same share from a run whose input lacks the score: refused before anything streams
    third = make_config(tmp_path / "data", tmp_path / "nope", stages=[
        {"type": "clip_score", "backend": FAKE, "fields": ["alt_text"], "clipscore": False},
        {"type": "filter", "rules": [{"score": "clip:alt_text", "top_fraction": 0.5}]}])
    with pytest.raises(ConfigError, match=r"none of the 24 samples the fit read has that score.*reward_score with keep"):
        run(parse_config(third), progress=False)


def test_rule_and_keep_validation():
    with pytest.raises(ValueError, match="give `score`, not `length`"):
        FilterRule(length="dsc", top_fraction=0.1)
    with pytest.raises(ValueError, match="one of min/max, top_fraction or percentile"):
        FilterRule(score="x", top_fraction=0.1, min=0.2)
    assert FilterRule(score="x", percentile=88).fitted and not FilterRule(score="x", min=1).fitted
    assert "top_fraction" not in FilterRule(score="x", min=1).model_dump()  # the hash of old configs holds
    with pytest.raises(ValueError, match="keep takes one of"):
        RewardScoreStageConfig.model_validate({"backend": FAKE, "keep": {"min": 1, "top_fraction": 0.5}})
    with pytest.raises(ValueError, match="not among the scored fields"):
        RewardScoreStageConfig.model_validate({"backend": FAKE, "keep": {"field": "dsc", "min": 1}})
