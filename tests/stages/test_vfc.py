"""The vfc stage on the fake backend: objects checked by the detector (then asked), claims asked,
the caption written from verified facts only; failures fall back with the reason."""

from capmill.stages.vfc import VfcStageConfig
from tests.stages.verify_util import run_stage, samples, updated

EXTRACT = "OBJECTS:\n- dog\n- unicorn\nCLAIMS:\n- The dog is brown.\n- The unicorn is flying."
FINAL = "A brown dog stands on the grass."


def config(**changes):
    base = VfcStageConfig(
        proposals=["dsc", "dsc_plus"],
        llm={"type": "fake", "script": [{"when": "List what they claim", "answer": EXTRACT},
                                        {"when": "Write a caption of the image", "answer": FINAL}]},
        detector={"type": "fake", "absent": ["unicorn"]},
        vqa={"type": "fake", "yes_if": ["brown"], "no_if": ["unicorn"]})
    return updated(base, **changes) if changes else base


def two_proposals(n, size=(96, 72)):
    batch = samples(n, "A brown dog and a flying unicorn.", key="dsc", size=size)
    for s in batch:
        s.captions["dsc_plus"] = type(s.captions["dsc"])(text="A dog on grass under a unicorn.", source="dsc_plus")
    return batch


def test_verified_facts_only():
    stage, batch = run_stage(config(), two_proposals(3))
    for sample in batch:
        assert sample.ok, sample.error
        caption = sample.captions["vfc"]
        assert caption.text == FINAL and caption.meta["fallback"] is None and caption.meta["style"] == "dsc"
        objects = {o["text"]: o for o in caption.meta["objects"]}
        assert objects["dog"]["verified"] and objects["dog"]["by"] == "detector"
        # not found by the detector, then asked: no
        assert not objects["unicorn"]["verified"] and objects["unicorn"]["by"] == "vqa" and objects["unicorn"]["p_yes"] == 0.1
        claims = {c["text"]: c for c in caption.meta["claims"]}
        assert claims["The dog is brown."]["verified"] and claims["The dog is brown."]["p_yes"] == 0.9
        assert not claims["The unicorn is flying."]["verified"]
    write_prompt = stage.llm.prompts[-1]
    verified, refuted = write_prompt.split("Found false")
    assert "The dog is brown." in verified and "unicorn" not in verified and "unicorn" in refuted
    # one call per step: extract, detect, ask (1 object + 2 claims per image), write
    assert stage.llm.batch_sizes == [3, 3] and stage.detector.batch_sizes == [3] and stage.vqa.batch_sizes == [9]
    assert "Write one or two sentences" in write_prompt  # the dsc style


def test_style_is_a_format_or_an_instruction():
    import pytest

    from capmill.errors import ConfigError

    config(style="tags").build()
    config(style="Write it as a haiku about the scene.").build()
    with pytest.raises(ConfigError, match="neither a style"):
        config(style="dcs").build()


def test_unparsed_claims_and_nothing_verified_fall_back_to_the_first_proposal():
    cfg = config(llm={"type": "fake", "script": [{"when": "List what they claim", "answer": "a dog, I guess"}]})
    stage, batch = run_stage(cfg, two_proposals(2))
    caption = batch[0].captions["vfc"]
    assert caption.text == "A brown dog and a flying unicorn." and caption.meta["fallback"] == "extract_unparsed"
    assert caption.meta["extract"]["attempts"] == 2 and stage.llm.batch_sizes == [2, 2]
    cfg = config(vqa={"type": "fake", "no_if": ["dog", "unicorn"]}, detector={"type": "fake", "absent": ["dog", "unicorn"]})
    stage, batch = run_stage(cfg, two_proposals(1))
    assert batch[0].captions["vfc"].meta["fallback"] == "nothing_verified"


def test_detector_failure_costs_only_that_sample_and_empty_proposals_fail_with_the_reason():
    batch = two_proposals(1) + two_proposals(1, size=(10, 10))
    batch[1].key = "small"
    extra = samples(1, "", key="dsc")
    extra[0].key = "empty"
    stage, batch = run_stage(config(detector={"type": "fake", "fail_below_px": 20}), batch + extra)
    assert [s.status for s in batch] == ["ok", "stage_error", "stage_error"]
    assert batch[1].error.startswith("vfc: detector: image of 10×10")
    assert batch[2].error == "vfc: every proposal (dsc, dsc_plus) is empty"
