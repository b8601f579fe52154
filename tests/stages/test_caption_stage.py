"""The caption stage: all formats in one batched call, length outcomes recorded and counted."""

import json

from PIL import Image

from capmill.config import parse_config
from capmill.run import run
from capmill.sample import Sample
from capmill.stages.base import RunContext
from capmill.stages.caption import CaptionStageConfig
from tests.conftest import make_config

LONG_30 = ("A tall man in a blue coat walks his brown dog along a wet cobbled street, past bakeries, "
           "lamps, parked bicycles and a red phone box on a grey evening.")
assert len(LONG_30.split()) == 30


def _stage(formats, **backend):
    stage = CaptionStageConfig(backend={"type": "fake", **backend}, formats=formats).build()
    stage.setup(RunContext())
    return stage


def _samples(n):
    out = []
    for i in range(n):
        s = Sample(key=f"k{i}", alt_text=f"Photo {i} of the Eiffel Tower")
        s.image.image = Image.new("RGB", (32, 24), (i * 20, 0, 0))
        out.append(s)
    return out


def test_all_formats_of_all_samples_in_one_backend_call_with_one_image_object_each():
    stage = _stage(["ssc", "dsc", "dsc_plus"], words=10)
    batch = _samples(4)
    seen = []
    inner = stage.backend.generate
    stage.backend.generate = lambda requests: (seen.append(requests), inner(requests))[1]
    stage.process(batch)
    assert stage.backend.batch_sizes == [12]  # 4 samples × 3 formats, no retries needed
    for sample in batch:
        assert set(sample.captions) == {"ssc", "dsc", "dsc_plus"}
        images = {id(r.images[0]) for r in seen[0] if r.tag.startswith(f"{sample.key}:")}
        assert images == {id(sample.image.image)}  # each image is handed over as one object
        for name, caption in sample.captions.items():
            assert caption.prompt_id == f"{name}@1"
            assert caption.meta["length"]["outcome"] == "first_try"
            assert caption.meta["length"]["attempts"] == 1


def test_miss_then_regenerated_with_a_firmer_prompt():
    # ssc allows 20 words: the first answer has 30, the retry 5.
    stage = _stage(["ssc"], responses=[LONG_30, "A cat sits on a mat."])
    [sample] = stage.process(_samples(1))
    caption = sample.captions["ssc"]
    assert caption.text == "A cat sits on a mat."
    assert caption.meta["length"] == {**caption.meta["length"], "outcome": "regenerated", "attempts": 2, "words": 6}
    assert stage.backend.batch_sizes == [1, 1]
    assert "at most 20 words" in stage.backend.prompts[1] and "at most" not in stage.backend.prompts[0]


def test_model_that_never_meets_the_target_is_trimmed_and_counted(tmp_path, wds):
    cfg = make_config(tmp_path / "data", tmp_path / "out", stages=[
        {"type": "caption", "formats": ["ssc", "dsc"], "backend": {"type": "fake", "words": 80}},
    ])
    summary = run(parse_config(cfg), progress=False)
    stats = json.loads((tmp_path / "out" / "_stats" / "00000.json").read_text())
    assert stats["captions"]["ssc"]["outcomes"] == {"trimmed": 8}
    assert stats["captions"]["dsc"]["outcomes"] == {"trimmed": 8}
    assert stats["captions"]["dsc"]["clip_tokens"]["p95"] <= 77
    assert stats["captions"]["ssc"]["words"]["p95"] <= 20
    assert summary.captions.keys["ssc"].outcomes["trimmed"] == 24
    rendered = summary.render()
    assert "ssc" in rendered and "trim" in rendered
    # Each retry round is one batched call for every caption that missed.
    first = _stage(["ssc"], words=80)
    first.process(_samples(3))
    assert first.backend.batch_sizes == [3, 3, 3]


def test_retries_zero_trims_at_once():
    stage = CaptionStageConfig(backend={"type": "fake", "words": 80}, formats=["ssc"], retries=0).build()
    stage.setup(RunContext())
    [sample] = stage.process(_samples(1))
    assert stage.backend.batch_sizes == [1]
    assert sample.captions["ssc"].meta["length"]["outcome"] == "trimmed"
    assert sample.captions["ssc"].meta["length"]["words"] <= 20


def test_failed_retry_keeps_the_first_answer_and_trims_it():
    stage = _stage(["ssc"], responses=[LONG_30])
    calls = []
    inner = stage.backend.generate

    def flaky(requests):
        calls.append(len(requests))
        if len(calls) > 1:
            from capmill.backends.base import Generation
            return [Generation(error="timeout") for _ in requests]
        return inner(requests)

    stage.backend.generate = flaky
    [sample] = stage.process(_samples(1))
    assert sample.ok
    meta = sample.captions["ssc"].meta
    assert meta["length"]["outcome"] == "trimmed" and meta["retry_error"] == "timeout"


def test_alt_text_slot_is_delimited_in_custom_format():
    stage = _stage(["custom"])
    stage.process(_samples(1))
    assert "<alt_text>\nPhoto 0 of the Eiffel Tower\n</alt_text>" in stage.backend.prompts[0]
    assert "about 40 words" in stage.backend.prompts[0]
