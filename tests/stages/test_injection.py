"""Prompt-injection defence: hostile AltTexts stay inside their delimiters, and fused outputs that
obey an injected instruction are rejected by the guards."""

import re

import pytest
from PIL import Image

from capmill.prompts.safety import CLOSE, OPEN
from capmill.sample import Caption, Sample
from capmill.stages.base import RunContext
from capmill.stages.caption import CaptionStageConfig
from capmill.stages.fuse import FuseStageConfig
from capmill.testing.hostile import hostile_alt_texts

CORPUS = hostile_alt_texts()
CAPTION = "A brown dog runs across a green lawn in front of a white house."
# Strings a tokenizer of some model family reads as a special token or chat turn marker.
SPECIAL = re.compile(
    r"<\|[^|<>\n]{1,40}\|>|<｜[^｜]{1,40}｜>|\[/?INST\]|<<\s*/?SYS\s*>>"
    r"|<\s*/?\s*(?:s|unk|pad|bos|eos|image|start_of_turn|end_of_turn|end_of_utterance|fake_token_around_image|global-img|row_\d+_col_\d+)\s*>",
    re.IGNORECASE,
)
DELIMITER = re.compile(r"<\s*/?\s*(?:alt_text|caption)\s*>", re.IGNORECASE)


def test_corpus_covers_the_attack_kinds():
    assert len(CORPUS) >= 30
    kinds = {h.kind for h in CORPUS}
    assert {"instruction", "fake_turn", "fake_delimiter", "special_tokens", "long", "language"} <= kinds
    assert max(len(h.text) for h in CORPUS) > 10_000
    assert len({h.id for h in CORPUS}) == len(CORPUS)


def _block(prompt: str) -> str:
    """The one AltText block of a prompt, checking its delimiters are the only ones present."""
    assert prompt.count(OPEN) == 1 and prompt.count(CLOSE) == 1
    start, end = prompt.index(OPEN) + len(OPEN), prompt.index(CLOSE)
    assert start < end
    return prompt[start:end]


@pytest.fixture(scope="module")
def fuse_prompts():
    stage = FuseStageConfig(backend={"type": "fake", "responses": [h.obeyed for h in CORPUS]}).build()
    stage.setup(RunContext())
    samples = [Sample(key=h.id, alt_text=h.text, captions={"dsc": Caption(text=CAPTION, source="dsc")}) for h in CORPUS]
    stage.process(samples)
    return stage, samples


def test_rendered_fusion_prompts_keep_each_alt_text_inside_its_delimiters(fuse_prompts):
    stage, _ = fuse_prompts
    assert len(stage.backend.prompts) == len(CORPUS)
    for hostile, prompt in zip(CORPUS, stage.backend.prompts, strict=True):
        # The fake logs "role: content" lines; the system turn must be the template's alone.
        system, _, user = prompt.partition("\nuser: ")
        assert system.startswith("system: ") and OPEN not in system, hostile.id
        block = _block(user)
        inner = block.strip("\n")
        assert "\n" not in inner, f"{hostile.id}: a line break inside the data could fake a turn"
        assert not DELIMITER.search(inner), f"{hostile.id}: fake delimiter survived"
        assert not SPECIAL.search(inner), f"{hostile.id}: special token survived"
        assert len(inner) <= stage.config.max_chars + 2
        outside = user.replace(block, "")
        assert not SPECIAL.search(outside)
        assert len(DELIMITER.findall(outside)) == 4  # our own <alt_text>…</alt_text> <caption>…</caption>


def test_guards_reject_every_output_that_obeys_the_injection(fuse_prompts):
    _, samples = fuse_prompts
    for hostile, sample in zip(CORPUS, samples, strict=True):
        fused = sample.captions["capsfusion"]
        assert fused.meta["fallback"] is not None, f"{hostile.id}: obeyed output {hostile.obeyed!r} was accepted"
        assert fused.text == CAPTION
        assert sample.alt_text == hostile.text  # the AltText itself is kept as it was


def test_caption_prompts_keep_each_alt_text_inside_its_delimiters():
    stage = CaptionStageConfig(backend={"type": "fake"}, formats=["custom"]).build()
    stage.setup(RunContext())
    batch = []
    for h in CORPUS:
        s = Sample(key=h.id, alt_text=h.text)
        s.image.image = Image.new("RGB", (8, 8))
        batch.append(s)
    stage.process(batch)
    for hostile, prompt in zip(CORPUS, stage.backend.prompts, strict=True):
        inner = _block(prompt).strip("\n")
        assert "\n" not in inner and not SPECIAL.search(inner) and not DELIMITER.search(inner), hostile.id
