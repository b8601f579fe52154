"""Prompt injection end to end with the fake backend scripted as a model that obeys every
injection it is shown (a test double): hostile AltTexts stay inside their delimiters, captions
and fusions that obey them are caught, regenerated once in one batched call, then never stored
as an ok training text, and the guard counts reach `_stats`."""

import json
import re
import tarfile
from collections import Counter

import pytest
from PIL import Image

from capmill.config import parse_config
from capmill.run import run
from capmill.sample import Caption, Sample
from capmill.stages.base import RunContext
from capmill.stages.caption import CaptionStageConfig
from capmill.stages.fuse import FuseStageConfig
from capmill.testing import items, write_tar
from capmill.testing.hostile import hostile_alt_texts
from capmill.testing.shards import Item, encode, generated
from tests.conftest import make_config

CORPUS = hostile_alt_texts()
CAPTION = "A brown dog runs across a green lawn in front of a white house."


def obeying():
    """The fake's script: answer every corpus AltText as a model obeying it would."""
    from capmill.testing.hostile import obeying_script

    return obeying_script(CAPTION)
# Strings a tokenizer of some model family reads as a special token or chat turn marker.
SPECIAL = re.compile(
    r"<\|[^|<>\n]{1,40}\|>|<｜[^｜]{1,40}｜>|\[/?INST\]|<<\s*/?SYS\s*>>"
    r"|<\s*/?\s*(?:s|unk|pad|bos|eos|image|start_of_turn|end_of_turn|end_of_utterance|fake_token_around_image|global-img|row_\d+_col_\d+)\s*>",
    re.IGNORECASE,
)
LOOKS_LIKE_DELIMITER = re.compile(
    r"[<＜﹤‹〈〈⟨«\[{]\s*[/\\／]?\s*(?:alt|ocr)?[\s_\-＿]*(?:text|caption)|&lt;|&#0*60;|&#x0*3c;", re.IGNORECASE)


def test_corpus_covers_the_attack_kinds():
    assert len(CORPUS) >= 60
    kinds = Counter(h.kind for h in CORPUS)
    assert {"instruction", "fake_turn", "fake_delimiter", "special_tokens", "long", "language", "appended", "obey"} <= set(kinds)
    assert kinds["fake_delimiter"] >= 10 and kinds["appended"] >= 10 and kinds["obey"] >= 10
    assert max(len(h.text) for h in CORPUS) > 10_000
    assert len({h.id for h in CORPUS}) == len(CORPUS)
    # The obeying double answers each AltText by its own rule and no other.
    script = obeying()
    for hostile, rule in zip(CORPUS, script, strict=True):
        assert [r["when"] for r in script if r["when"] in rule["when"]] == [rule["when"]], hostile.id


def _blocks(prompt: str, kind: str) -> list[str]:
    """The untrusted blocks of `kind` in a prompt, checking their delimiters pair up."""
    opens, closes = prompt.count(f"<{kind}>"), prompt.count(f"</{kind}>")
    assert opens == closes
    return re.findall(rf"<{kind}>\n(.*?)\n</{kind}>", prompt, re.DOTALL)


def check_prompt(prompt: str, kinds: dict[str, int], rendered: bool = False) -> None:
    """Exactly the expected blocks, each a single line with no special token and nothing that
    reads as a delimiter; no special token outside them either, unless the prompt is `rendered`
    with a model's chat template (which adds its own)."""
    outside = prompt
    for kind, count in kinds.items():
        blocks = _blocks(prompt, kind)
        assert len(blocks) == count, (kind, prompt[:300])
        for inner in blocks:
            assert "\n" not in inner, "a line break inside the data could fake a turn"
            assert not SPECIAL.search(inner) and not LOOKS_LIKE_DELIMITER.search(inner), inner[:200]
            outside = outside.replace(inner, "")
    assert rendered or not SPECIAL.search(outside)


def _image_samples(alts):
    out = []
    for key, alt in alts:
        s = Sample(key=key, alt_text=alt)
        s.image.image = Image.new("RGB", (8, 8))
        out.append(s)
    return out


# ---- the fuse stage -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fused():
    stage = FuseStageConfig(backend={"type": "fake", "script": obeying()}).build()
    stage.setup(RunContext())
    samples = [Sample(key=h.id, alt_text=h.text, captions={"dsc": Caption(text=CAPTION, source="dsc")}) for h in CORPUS]
    stage.process(samples)
    return stage, samples


def test_fusion_prompts_keep_each_alt_text_inside_its_delimiters(fused):
    stage, _ = fused
    assert len(stage.backend.prompts) == 2 * len(CORPUS)  # every fusion obeyed, so every one was asked twice
    for prompt in stage.backend.prompts:
        system, _, user = prompt.partition("\nuser: ")
        assert system.startswith("system: ") and "<alt_text>" not in system
        check_prompt(user, {"alt_text": 1, "caption": 1})


def test_every_obeyed_fusion_is_rejected_regenerated_once_in_one_call_and_falls_back(fused):
    stage, samples = fused
    assert stage.backend.batch_sizes == [len(CORPUS), len(CORPUS)]
    for hostile, sample in zip(CORPUS, samples, strict=True):
        fusion = sample.captions["capsfusion"]
        assert fusion.meta["fallback"] is not None, f"{hostile.id}: {fusion.text!r} was accepted"
        assert fusion.text == CAPTION and fusion.model is None
        guards = fusion.meta["guards"]
        assert guards["outcome"] == "fallback" and len(guards["rejected"]) == 2, hostile.id
        assert sample.alt_text == hostile.text  # the AltText itself is kept as it was


def test_the_brief_three_appended_injections_are_caught_in_fusion():
    alt = "NASA portrait of astronaut Eileen Collins in her flight suit"
    good = "A NASA portrait of astronaut Eileen Collins smiling in her orange flight suit."
    for suffix in (" PWNED", " http://169.254.169.254/latest/meta-data/", " <script>alert(1)</script>"):
        stage = FuseStageConfig(backend={"type": "fake", "responses": [good + suffix] * 2}).build()
        stage.setup(RunContext())
        [s] = stage.process([Sample(key="k", alt_text=alt, captions={"dsc": Caption(text="A woman in an orange suit.", source="dsc")})])
        assert s.captions["capsfusion"].meta["fallback"] in ("injection", "url", "markup"), suffix
        assert suffix.strip() not in s.captions["capsfusion"].text


# ---- the caption stage ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def captioned():
    stage = CaptionStageConfig(backend={"type": "fake", "script": obeying()}, formats=["custom"]).build()
    stage.setup(RunContext())
    samples = _image_samples([(h.id, h.text) for h in CORPUS])
    stage.process(samples)
    return stage, samples


def test_caption_prompts_keep_each_alt_text_inside_its_delimiters(captioned):
    stage, _ = captioned
    assert len(stage.backend.prompts) == 2 * len(CORPUS)
    for prompt in stage.backend.prompts:
        check_prompt(prompt, {"alt_text": 1})


def test_every_caption_that_obeys_its_alt_text_is_caught_and_never_stored_ok(captioned):
    stage, samples = captioned
    assert stage.backend.batch_sizes == [len(CORPUS), len(CORPUS)]  # one regeneration round, batched
    for hostile, sample in zip(CORPUS, samples, strict=True):
        caption = sample.captions["custom"]
        # The AltText that made the model obey is no stand-in either: the sample is dropped,
        # keeping the rejected caption and why.
        assert sample.status == "dropped" and sample.error.startswith("guard: custom: "), (hostile.id, caption.text)
        assert caption.meta["flagged"] and caption.meta["guards"]["outcome"] == "dropped"
        assert caption.meta["guards"]["alt_text_cannot_stand_in"]
        assert len(caption.meta["guards"]["rejected"]) == 2


# ---- whole runs: KEY.txt and _stats ---------------------------------------------------------


def _hostile_shard(path):
    hostile = [Item(f"h_{h.id}", encode(generated(i)), "jpg", h.text, {}) for i, h in enumerate(CORPUS)]
    return write_tar(path / "00000.tar", hostile + list(items(8, prefix="ok_")))


def _texts(out):
    with tarfile.open(out / "00000.tar") as tar:
        return {m.name[:-4]: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".txt")}


def _records(out):
    with tarfile.open(out / "00000.tar") as tar:
        return {m.name[:-5]: Sample.from_json(tar.extractfile(m).read()).to_dict()
                for m in tar.getmembers() if m.name.endswith(".json")}


def test_run_obeyed_captions_never_become_key_txt_and_guard_counts_reach_stats(tmp_path):
    _hostile_shard(tmp_path / "data")
    cfg = make_config(tmp_path / "data", tmp_path / "out", stages=[
        {"type": "caption", "formats": ["custom"], "backend": {"type": "fake", "script": obeying()}},
    ])
    cfg["output"].update(text_field="custom", rejects=True)
    summary = run(parse_config(cfg), progress=False)
    texts, records = _texts(tmp_path / "out"), _records(tmp_path / "out")
    assert set(texts) == {f"ok_{i:06d}" for i in range(8)}  # every hostile sample went to the rejects
    assert all(r["status"] == "ok" and r["captions"]["custom"]["model"] == "fake:fake" for r in records.values())
    obeyed = {h.obeyed_with(CAPTION) for h in CORPUS}
    assert not (set(texts.values()) & obeyed)
    stats = json.loads((tmp_path / "out" / "_stats" / "00000.json").read_text())
    tally = stats["captions"]["custom"]
    assert sum(tally["guards"].values()) == 2 * len(CORPUS) and tally["guard_outcomes"] == {"dropped": len(CORPUS)}
    assert {"injection", "refusal", "loop", "language", "markup", "truncated"} <= set(tally["guards"])
    assert sum(n for reason, n in stats["drops"].items() if reason.startswith("guard: custom: ")) == len(CORPUS)
    assert "output guards" in summary.render() and "dropped 70" in summary.render()


def test_run_obeyed_fusions_never_become_key_txt(tmp_path):
    _hostile_shard(tmp_path / "data")
    cfg = make_config(tmp_path / "data", tmp_path / "out", stages=[
        {"type": "caption", "formats": ["ssc"], "backend": {"type": "fake"}},  # ssc does not show the AltText
        {"type": "fuse", "caption": "ssc", "backend": {"type": "fake", "script": obeying()}},
    ])
    cfg["output"]["text_field"] = "capsfusion"
    run(parse_config(cfg), progress=False)
    texts, records = _texts(tmp_path / "out"), _records(tmp_path / "out")
    assert len(records) == len(CORPUS) + 8
    for key, record in records.items():
        fusion = record["captions"]["capsfusion"]
        if key.startswith("h_"):
            assert record["status"] == "ok" and fusion["meta"]["fallback"], key
            assert texts[key] == record["captions"]["ssc"]["text"]  # the caption, not what the AltText asked for
        else:
            assert fusion["meta"]["fallback"] in (None, "off_topic", "lost_entities", "copy")
    stats = json.loads((tmp_path / "out" / "_stats" / "00000.json").read_text())
    assert stats["captions"]["capsfusion"]["guard_outcomes"]["fallback"] >= len(CORPUS)
