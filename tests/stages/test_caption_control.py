"""NoC alignment-level control in the caption stage: a control token or a prompt variant chosen
by the sample's `align_bin`, or the top bin for every sample."""

import pytest
from PIL import Image

from capmill import keys
from capmill.config import parse_config
from capmill.errors import ConfigError
from capmill.prompts.control import AlignControl, Controller
from capmill.run import run
from capmill.sample import ImageRef, Sample
from capmill.stages.base import RunContext
from capmill.stages.caption import CaptionStageConfig
from tests.conftest import make_config


def _samples():
    image = Image.new("RGB", (32, 32), (1, 2, 3))
    return [Sample(key=f"s{b}", image=ImageRef(image=image), alt_text="x", scores={"align_bin": float(b)})
            for b in (0, 3, 7)] + [Sample(key="none", image=ImageRef(image=image))]


def _captions(control, formats=("ssc",), prompt_dirs=()):
    stage = CaptionStageConfig.model_validate({"backend": {"type": "fake"}, "formats": list(formats),
                                               "prompt_dirs": list(prompt_dirs), "control": control}).build()
    stage.setup(RunContext())
    batch = stage.process(_samples())
    return stage.backend.prompts, batch


def test_token_mode_puts_the_bin_token_before_the_prompt():
    prompts, batch = _captions({"mode": "token", "level": "own"})
    assert [p.split(" ", 1)[0] for p in prompts] == ["<align_0>", "<align_3>", "<align_7>", "<align_7>"]
    assert batch[3].captions["ssc"].meta["control"] == {"bin": 7, "level": "own", "mode": "token", "missing": True}
    assert batch[1].captions["ssc"].meta["control"]["bin"] == 3
    top, _ = _captions({"mode": "token"})
    assert all(p.startswith("<align_7> ") for p in top)
    fixed, _ = _captions({"mode": "token", "level": 2, "token": "[level {bin}]"})
    assert all(p.startswith("[level 2] ") for p in fixed)


def test_prompt_mode_picks_the_level_instruction():
    prompts, _ = _captions({"level": "own"})
    levels = Controller(AlignControl()).levels
    # 8 bins over 3 levels: bins 0-2 → 0, 3-5 → 1, 6-7 → 2
    assert [p.rsplit("\n\n", 1)[1] for p in prompts] == [levels[0], levels[1], levels[2], levels[2]]


def test_a_format_with_a_control_slot_places_it_there(tmp_path):
    (tmp_path / "mine.yaml").write_text("name: mine\ntemplate: '{control} Caption the image.'\n")
    prompts, _ = _captions({"mode": "token", "level": "own"}, formats=["mine"], prompt_dirs=[str(tmp_path)])
    assert prompts[:3] == ["<align_0> Caption the image.", "<align_3> Caption the image.", "<align_7> Caption the image."]


def test_own_level_reads_the_bin_and_the_chain_checks_it(tmp_path, wds):
    own = CaptionStageConfig.model_validate({"backend": {"type": "fake"}, "formats": ["ssc"], "control": {"level": "own"}})
    assert keys.score("align_bin") in own.io(frozenset()).reads
    top = CaptionStageConfig.model_validate({"backend": {"type": "fake"}, "formats": ["ssc"], "control": {}})
    assert keys.score("align_bin") not in top.io(frozenset()).reads
    caption = {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"], "control": {"level": "own"}}
    with pytest.raises(ConfigError, match=r'reads scores\["align_bin"\], which no earlier stage writes'):
        run(parse_config(make_config(tmp_path / "data", tmp_path / "o1", stages=[caption])), progress=False)
    stages = [{"type": "align_bin", "scorer": {"type": "fake"}}, caption]
    assert run(parse_config(make_config(tmp_path / "data", tmp_path / "o2", stages=stages)), progress=False, limit=4).ok


def test_config_rules_and_an_unset_control_keeps_the_hash():
    with pytest.raises(ValueError, match="not a bin of 0 … 7"):
        AlignControl(level=8)
    with pytest.raises(ValueError, match=r"must contain \{bin\}"):
        AlignControl(mode="token", token="<align>")
    assert "control" not in CaptionStageConfig.model_validate({"backend": {"type": "fake"}, "formats": ["ssc"]}).model_dump()
