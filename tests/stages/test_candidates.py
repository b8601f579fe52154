"""The candidates stage: K captions per image from several captioners, prompts and decoding settings."""

import json

import pytest
from PIL import Image

from capmill.backends.base import GenerationParams
from capmill.config import parse_config
from capmill.errors import ConfigError
from capmill.run import run
from capmill.sample import TRANSIENT_ERROR, ImageRef, Sample
from capmill.stages.base import RunContext
from capmill.stages.candidates import CandidatesStageConfig
from tests.conftest import make_config

FAKE = {"type": "fake"}


def _samples(n=3):
    out = []
    for i in range(n):
        image = Image.new("RGB", (48, 40), (40 * i, 100, 200))
        out.append(Sample(key=f"s{i}", image=ImageRef(image=image), alt_text=f"a photo number {i}"))
    return out


def _stage(**config):
    stage = CandidatesStageConfig.model_validate({"captioners": [FAKE], **config}).build()
    stage.setup(RunContext())
    return stage


def test_settings_expand_and_number_the_candidates():
    config = CandidatesStageConfig.model_validate({
        "captioners": [FAKE, {"type": "fake", "model": "b"}],
        "settings": [{"format": "ssc"}, {"captioner": 1, "format": "dsc", "n": 2, "params": {"temperature": 0.7}},
                     {"format": "ssc", "sweep": {"num_beams": [2, 3, 4, 5, 6, 7, 8]}}]})
    expanded = config.expanded()
    assert config.count() == 10 and len(expanded) == 9
    assert [s.params.num_beams for s in expanded[2:]] == [2, 3, 4, 5, 6, 7, 8]
    io = config.io(frozenset())
    assert sorted(k.name for k in io.writes) == sorted(f"cand.{i}" for i in range(10))


@pytest.mark.parametrize("bad, message", [
    ({"settings": [{"captioner": 1}]}, "only 1 captioner"),
    ({"settings": [{"sweep": {"beams": [2, 3]}}]}, "no decoding parameters"),
    ({"settings": [{"sweep": {"num_beams": []}}]}, "non-empty list"),
    ({"settings": [{"sweep": {"num_beams": [0]}}]}, "num_beams=0"),
    ({"settings": [{"format": "nope"}]}, "unknown formats template"),
])
def test_bad_settings_fail_when_the_stage_is_built(bad, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        CandidatesStageConfig.model_validate({"captioners": [FAKE], **bad}).build()


def test_each_candidate_records_the_setting_that_made_it_and_one_call_per_captioner():
    stage = CandidatesStageConfig.model_validate({
        "captioners": [FAKE, {"type": "fake", "model": "b"}],
        "settings": [{"format": "ssc"}, {"captioner": 1, "format": "dsc", "n": 2, "params": {"temperature": 0.7}},
                     {"format": "ssc", "sweep": {"seed": [1, 2]}}]}).build()
    stage.setup(RunContext())
    batch = stage.process(_samples(3))
    assert [b.batch_sizes for b in stage.backends] == [[9], [3]]  # every request of the batch in one call each
    for sample in batch:
        assert sorted(sample.captions) == [f"cand.{i}" for i in range(5)]
        first, second, third, beam_a, beam_b = (sample.captions[f"cand.{i}"] for i in range(5))
        assert first.model == "fake:fake" and first.prompt_id == "ssc@1" and first.meta["setting"]["params"] is None
        assert second.model == "fake:b" and second.prompt_id == "dsc@1"
        assert second.meta["setting"]["sample"] == 0 and third.meta["setting"]["sample"] == 1
        assert second.meta["setting"]["params"]["temperature"] == 0.7
        assert [beam_a.meta["setting"]["params"]["seed"], beam_b.meta["setting"]["params"]["seed"]] == [1, 2]
        assert len({c.text for c in sample.captions.values()}) == 5


def test_a_rejected_candidate_is_regenerated_then_flagged_or_omitted():
    refusing = {"type": "fake", "script": [{"when": "two or three compact", "answer": "I'm sorry, but I can't describe images."}]}
    for on_reject in ("flag", "omit"):
        stage = CandidatesStageConfig.model_validate({
            "captioners": [refusing], "on_reject": on_reject,
            "settings": [{"format": "ssc"}, {"format": "dsc"}]}).build()
        stage.setup(RunContext())
        sample = stage.process(_samples(1))[0]
        assert stage.backends[0].batch_sizes == [2, 1]  # the refused one asked again, in one call
        assert sample.ok and sample.captions["cand.0"].meta.get("flagged") is None
        if on_reject == "flag":
            flagged = sample.captions["cand.1"]
            assert flagged.meta["flagged"] == "refusal" and flagged.meta["guards"]["outcome"] == "flagged"
        else:
            assert "cand.1" not in sample.captions


def test_a_transient_failure_makes_the_sample_retryable(monkeypatch):
    from capmill.backends.base import Generation

    stage = _stage(settings=[{"format": "ssc"}])
    monkeypatch.setattr(stage.backends[0], "generate",
                        lambda reqs: [Generation(error="timeout", transient=True) for _ in reqs])
    sample = stage.process(_samples(1))[0]
    assert sample.status == TRANSIENT_ERROR and not sample.captions


def test_guidance_is_refused_at_setup_where_the_backend_cannot_run_it():
    stage = CandidatesStageConfig.model_validate({"captioners": [FAKE], "settings": [
        {"params": GenerationParams(guidance_scale=2.0).model_dump()}]}).build()
    with pytest.raises(ConfigError, match="guidance_scale needs a backend"):
        stage.setup(RunContext())


@pytest.mark.slow
def test_k_candidates_cost_one_generate_call_per_setting(tiny_models, monkeypatch):
    """Four settings (greedy, beams 2 and 3, sampling n=2) over a batch of three images: four
    model.generate calls, whatever the batch size."""
    idefics = {"type": "transformers", "model": str(tiny_models / "idefics3"), "device": "cpu", "batch_size": 8}
    stage = CandidatesStageConfig.model_validate({
        "captioners": [idefics], "guards": {"enabled": False},
        "settings": [{"format": "ssc", "params": {"max_new_tokens": 6}},
                     {"format": "ssc", "sweep": {"num_beams": [2, 3]}, "params": {"max_new_tokens": 6}},
                     {"format": "ssc", "n": 2, "params": {"max_new_tokens": 6, "temperature": 0.9}}]}).build()
    stage.setup(RunContext())
    model = stage.backends[0].model
    calls = []
    original = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(k.get("input_ids").shape[0]) or original(*a, **k))
    batch = stage.process(_samples(3))
    assert calls == [3, 3, 3, 3]
    assert all(sorted(s.captions) == [f"cand.{i}" for i in range(5)] for s in batch)


def test_candidates_run_end_to_end(tmp_path, wds):
    stages = [{"type": "candidates", "captioners": [FAKE], "store_as": "c",
               "settings": [{"format": "ssc"}, {"format": "dsc", "sweep": {"seed": [0, 1]}}]}]
    assert run(parse_config(make_config(tmp_path / "data", tmp_path / "out", stages=stages)), progress=False, limit=4).ok
    written = json.loads((tmp_path / "out" / "_run.json").read_text())["written"]["captions"]
    assert written == ["c.0", "c.1", "c.2"]
