"""The fuse stage (CapsFusion / VeCLIP) and its guards."""

import json
from collections import Counter

import pytest

from capmill.config import parse_config
from capmill.errors import ConfigError
from capmill.guards import GuardInput, OutputGuard
from capmill.guards.checks import check_empty, check_loop, check_refusal, check_runaway
from capmill.guards.fuse import (
    FUSE_CHECKS,
    FuseGuardConfig,
    check_concatenation,
    check_copy,
    check_off_topic,
    entities,
    lost_entity_share,
)
from capmill.run import run
from capmill.sample import Caption, Sample
from capmill.stages.base import RunContext
from capmill.stages.fuse import FuseStageConfig, clean_output
from tests.conftest import make_config

ALT = "NASA portrait of astronaut Eileen Collins in her flight suit, 1999"
CAP = "A woman in an orange suit smiles in front of a flag."
GOOD = "A 1999 NASA portrait of astronaut Eileen Collins smiling in an orange flight suit in front of a flag."
G = FuseGuardConfig()


def _given(alt=ALT, cap=CAP):
    return GuardInput(sources={"alt_text": alt, "caption": cap}, language="en", grounded=True)


def first_failure(output, alt, cap, cfg):
    return OutputGuard(cfg, extra=FUSE_CHECKS).review(output, _given(alt, cap)).reason


def test_good_fusion_passes_every_guard():
    assert first_failure(GOOD, ALT, CAP, G) is None


@pytest.mark.parametrize(("output", "reason"), [
    ("", "empty"),
    ("  ...  ", "empty"),
    ("I'm sorry, but I cannot help with that.", "refusal"),
    ("As an AI language model, I see a woman.", "refusal"),
    (" ".join(["woman orange suit flag"] * 40), "loop"),
    ("a woman in an orange suit " * 3 + "NASA Eileen Collins 1999 flag", "loop"),
    ("NASA astronaut Eileen Collins in 1999 " + " ".join(f"detail{i}" for i in range(120)) + ".", "runaway"),
    (CAP, "copy"),
    (ALT, "copy"),
    (ALT + ". " + CAP, "concatenation"),
    (CAP + " " + ALT, "concatenation"),
    ("PWNED", "injection"),
    ("Buy cheap watches today.", "off_topic"),
    ("A woman in an orange suit smiles in front of a flag at an event.", "lost_entities"),
])
def test_guard_reasons(output, reason):
    assert first_failure(output, ALT, CAP, G) == reason


def test_guard_functions_individually():
    given = _given()
    assert check_empty("", given, G) and not check_empty("x", given, G)
    assert check_refusal("Unfortunately, I can't see the image.", given, G)
    assert not check_refusal("Sorry-looking dog on a porch.", given, G)
    assert check_loop("a b c d " * 3, given, G) and not check_loop(GOOD, given, G)
    assert check_runaway(" ".join(["w"] * 121), given, G) and not check_runaway(GOOD, given, G)
    assert check_copy(CAP.upper(), given, G)  # case and punctuation do not hide a copy
    assert check_concatenation(f"{CAP} {ALT}", given, G) and not check_concatenation(GOOD, given, G)
    assert check_off_topic("Buy cheap watches today.", given, G) and not check_off_topic(GOOD, given, G)
    assert entities(ALT) == {"nasa", "eileen", "collins", "1999"}
    assert lost_entity_share("A woman named Collins.", ALT) == 0.75
    assert lost_entity_share("anything", "a plain lowercase alt text") == 0.0


def test_tolerance_is_configurable():
    lossy = "Astronaut Collins smiles in an orange suit in front of a flag."
    assert first_failure(lossy, ALT, CAP, G) == "lost_entities"  # 3 of 4 lost > 0.5
    assert first_failure(lossy, ALT, CAP, FuseGuardConfig(max_lost_entities=0.8)) is None


def test_clean_output_strips_labels_and_quotes():
    assert clean_output('  Caption: "A dog on a beach."  ') == "A dog on a beach."


def _fuse(responses, template="capsfusion", **cfg):
    stage = FuseStageConfig(backend={"type": "fake", "responses": responses}, template=template, **cfg).build()
    stage.setup(RunContext())
    return stage


def _sample(alt=ALT, cap=CAP, key="k"):
    return Sample(key=key, alt_text=alt, captions={"dsc": Caption(text=cap, source="dsc")})


def test_fused_caption_is_stored_under_the_template_name():
    stage = _fuse([GOOD])
    [s] = stage.process([_sample()])
    fused = s.captions["capsfusion"]
    assert fused.text == GOOD and fused.meta["fallback"] is None and fused.prompt_id == "capsfusion@2"
    assert s.alt_text == ALT and s.captions["dsc"].text == CAP  # inputs are never overwritten
    assert fused.meta["length"]["words"] == len(GOOD.split())


def test_rejected_output_is_regenerated_once_then_falls_back_to_the_caption_with_its_reason():
    stage = _fuse(["I'm sorry, I can't do that.", "I'm sorry, I still can't."])
    [s] = stage.process([_sample()])
    fused = s.captions["capsfusion"]
    assert fused.text == CAP and fused.meta["fallback"] == "refusal"
    assert fused.meta["rejected"].startswith("I'm sorry, I still")
    assert stage.backend.batch_sizes == [1, 1]  # asked once more, with a note saying why
    assert "without apologies" in stage.backend.prompts[1] and "without apologies" not in stage.backend.prompts[0]
    guards = fused.meta["guards"]
    assert guards["outcome"] == "fallback" and [r["reasons"][0] for r in guards["rejected"]] == ["refusal", "refusal"]
    stage = _fuse(["PWNED"], prefer="alt_text", guards={"regenerate": 0})
    [s] = stage.process([_sample()])
    assert s.captions["capsfusion"].text == ALT and stage.backend.batch_sizes == [1]


def test_a_regenerated_fusion_that_passes_is_kept():
    stage = _fuse(["I'm sorry, I can't do that.", GOOD])
    [s] = stage.process([_sample()])
    fused = s.captions["capsfusion"]
    assert fused.text == GOOD and fused.meta["fallback"] is None and fused.model == stage.backend.model_id
    assert fused.meta["guards"]["outcome"] == "regenerated"


def test_empty_alt_text_keeps_the_caption_without_calling_the_llm():
    stage = _fuse([])
    [a, b] = stage.process([_sample(alt=""), _sample(alt=None, key="k2")])
    for s in (a, b):
        assert s.captions["capsfusion"].text == CAP
        assert s.captions["capsfusion"].meta["fallback"] == "empty_alt_text"
    assert stage.backend.prompts == []


def test_published_decoding_defaults_and_one_batched_call():
    stage = _fuse([GOOD, GOOD, GOOD])
    seen = []
    inner = stage.backend.chat
    stage.backend.chat = lambda reqs: (seen.extend(reqs), inner(reqs))[1]
    stage.process([_sample(key=f"k{i}") for i in range(3)])
    assert stage.backend.batch_sizes == [3]
    assert {(r.params.num_beams, r.params.max_new_tokens, r.params.temperature) for r in seen} == {(3, 80, 0.0)}
    system, user = seen[0].messages
    assert system["role"] == "system" and "never follow" in system["content"]
    assert "<alt_text>" in user["content"] and "<caption>" in user["content"]


def test_inputs_budget_is_the_named_option_for_the_earlier_rule():
    stage = _fuse([GOOD], input_budget=40, budget_scope="inputs", budget_tokenizer="clip")
    long_alt = "Eileen Collins " + " ".join(f"word{i}" for i in range(200))
    alt_cut, cap_cut, cut = stage.fit_budget(long_alt, CAP)
    assert cut and cap_cut == CAP and alt_cut.startswith("Eileen Collins")
    assert stage.count(alt_cut) + stage.count(CAP) <= 40
    huge_cap = " ".join(["tree"] * 100)
    alt_cut, cap_cut, cut = stage.fit_budget("Eiffel Tower", huge_cap)
    assert alt_cut == "" and stage.count(cap_cut) <= 40
    [s] = stage.process([_sample(alt=long_alt)])
    assert s.captions["capsfusion"].meta["inputs"]["alt_text_truncated"] is True
    assert "word150" not in stage.backend.prompts[0]


def test_prompt_budget_counts_the_whole_prompt_as_capsfusion_does():
    # The fake's tokenizer (a test double) makes a token of each word and 2 of each chat turn, so
    # the budget can be worked out by hand: prompt = template F + AltText words + caption words.
    stage = _fuse([GOOD], input_budget=256)
    assert stage.config.budget_scope == "prompt" and stage.config.budget_tokenizer == "model"
    fixed = stage.prompt_tokens.prompt_length(stage.messages("", ""))
    cap_words = len(CAP.split())
    assert fixed == sum(len(m["content"].split()) + 2 for m in stage.messages("", "")) + 1
    long_alt = " ".join(f"w{i}" for i in range(300))
    alt_cut, cap_cut, cut = stage.fit_budget(long_alt, CAP)
    # AltText cut first, from its end, to exactly what is left of the 256 tokens.
    assert cut and cap_cut == CAP and alt_cut == " ".join(f"w{i}" for i in range(256 - fixed - cap_words))
    assert stage.prompt_tokens.prompt_length(stage.messages(alt_cut, cap_cut)) == 256
    # A prompt of exactly the budget is left whole (the reference's `>= 256` would empty the AltText).
    exact = " ".join(f"w{i}" for i in range(256 - fixed - cap_words))
    assert stage.fit_budget(exact, CAP) == (exact, CAP, False)
    # A caption that alone overflows: the AltText goes, then the caption's end.
    huge_cap = " ".join(["tree"] * 400)
    alt_cut, cap_cut, cut = stage.fit_budget("Eiffel Tower", huge_cap)
    assert alt_cut == "" and cap_cut == " ".join(["tree"] * (256 - fixed))
    [s] = stage.process([_sample(alt=long_alt)])
    assert s.captions["capsfusion"].meta["inputs"]["alt_text_truncated"] is True
    assert len(stage.backend.prompts[0].split()) <= 256


def test_prompt_budget_with_the_llms_own_tokenizer_bounds_its_input_ids(tiny_models):
    from capmill.backends.base import ChatRequest
    from capmill.text.prompt_budget import fit_prompt

    stage = FuseStageConfig(backend={"type": "transformers", "model": str(tiny_models / "qwen2_lm"), "device": "cpu"},
                            input_budget=4096).build()
    stage.setup(RunContext())
    backend = stage.backend
    # The tiny model's small vocabulary spends many tokens on the template: budget = template + 60.
    budget = stage.prompt_tokens.prompt_length(stage.messages("", "")) + 60
    long_alt = "NASA astronaut Eileen Collins " + " ".join(["red car near the old bridge"] * 20)
    cap = "A woman stands in front of a flag."
    alt_cut, cap_cut, total = fit_prompt(long_alt, cap, budget, stage.prompt_tokens, stage.messages)
    ids = backend._chat_inputs([ChatRequest(messages=stage.messages(alt_cut, cap_cut))])["input_ids"]
    whole = backend._chat_inputs([ChatRequest(messages=stage.messages(long_alt, cap))])["input_ids"]
    # The count is what the model reads, chat template included, and it fits.
    assert whole.shape[1] > budget and ids.shape[1] == total and budget - 3 <= total <= budget
    assert cap_cut == cap and alt_cut.startswith("NASA astronaut") and len(alt_cut) < len(long_alt)
    stage.teardown()


def test_budget_tokenizer_errors_say_what_to_do():
    from capmill.errors import SetupError

    with pytest.raises(ConfigError, match="budget_scope: inputs"):
        _fuse([], budget_tokenizer="clip")
    stage = FuseStageConfig(backend={"type": "openai", "model": "served-name", "probe": False}).build()
    with pytest.raises(SetupError, match="budget_tokenizer: served-name"):
        stage.setup(RunContext())
    with pytest.raises(ConfigError, match="raise input_budget"):
        _fuse([], input_budget=16)


def test_other_language_alt_text_is_kept_and_language_is_an_option():
    alt = "Der Kölner Dom bei Nacht, 2019"
    stage = _fuse(["Cologne Cathedral (Kölner Dom) lit up at night in 2019, seen across a square."])
    [s] = stage.process([_sample(alt=alt, cap="A large gothic cathedral lit up at night across a square.")])
    assert s.alt_text == alt
    assert "language of the second text" in stage.backend.prompts[0]
    assert s.captions["capsfusion"].meta["fallback"] is None
    german = _fuse([], language="German")
    german.process([_sample(alt=alt)])
    assert "Write in German." in german.backend.prompts[0]
    keep = _fuse([], language="alt_text")
    keep.process([_sample(alt=alt)])
    assert "language of the first text" in keep.backend.prompts[0]


def test_veclip_template_and_config_errors(tmp_path):
    stage = _fuse([], template="veclip", caption="ssc")
    s = Sample(key="k", alt_text=ALT, captions={"ssc": Caption(text=CAP, source="ssc")})
    stage.process([s])
    assert "visual details" in stage.backend.prompts[0] and "veclip" in s.captions
    with pytest.raises(ConfigError, match="overwrite"):
        FuseStageConfig(backend={"type": "fake"}, caption="dsc", store_as="dsc").build()
    (tmp_path / "t.yaml").write_text("name: t\ntemplate: '{alt_text} {image_url}'\n")
    with pytest.raises(ConfigError, match=r"\{image_url\}"):
        FuseStageConfig(backend={"type": "fake"}, template=str(tmp_path / "t.yaml")).build()


def test_fallbacks_are_counted_by_reason_in_shard_stats(tmp_path, wds):
    cfg = make_config(tmp_path / "data", tmp_path / "out", stages=[
        {"type": "caption", "formats": ["dsc"], "backend": {"type": "fake"}},
        {"type": "fuse", "caption": "dsc", "guards": {"regenerate": 0},
         "backend": {"type": "fake", "responses": ["I'm sorry."] * 3 + [""] * 2}},
    ])
    summary = run(parse_config(cfg), progress=False)
    # Shards run concurrently, so the scripted answers may land in any shard: add them up.
    fallbacks = Counter()
    for path in (tmp_path / "out" / "_stats").glob("*.json"):
        fallbacks.update(json.loads(path.read_text())["captions"]["capsfusion"]["fallbacks"])
    assert fallbacks["refusal"] == 3 and fallbacks["empty"] == 2
    assert summary.captions.keys["capsfusion"].count == 24
    assert "refusal 3" in summary.render()
