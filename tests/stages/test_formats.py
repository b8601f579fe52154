"""Caption formats as data: built-in files, user formats, slots, length counting and trimming."""

import pytest

from capmill.errors import ConfigError
from capmill.prompts import builtin_names, load_template
from capmill.stages.caption import CaptionStageConfig
from capmill.text.length import (
    LengthTarget,
    count_clip_tokens,
    count_words,
    length_settings,
    split_sentences,
    trim,
    truncate_to,
)


def test_builtin_formats_load_with_targets():
    assert {"ssc", "dsc", "dsc_plus", "tags", "custom"} <= set(builtin_names("formats"))
    for name in ("ssc", "dsc", "dsc_plus", "tags", "custom"):
        template = load_template("formats", name)
        target, policy = length_settings(template.options, name)
        assert target is not None and policy.retries >= 0
        assert template.source, f"{name} must name its source paper"
    dsc, _ = length_settings(load_template("formats", "dsc").options, "dsc")
    assert (dsc.unit, dsc.tokenizer, dsc.max) == ("tokens", "clip", 77)


def test_clip_tokens_are_counted_with_the_real_bpe_including_start_and_end():
    # "a photo of a cat" is five BPE tokens in CLIP's vocabulary; +2 for start/end.
    assert count_clip_tokens("a photo of a cat") == 7
    # Punctuation and rare words split into several tokens, unlike a word count.
    text = "Photorealistic, ultra-detailed macro-photograph!!"
    assert count_clip_tokens(text) > count_words(text) + 2


def test_user_format_from_own_yaml(tmp_path):
    (tmp_path / "haiku.yaml").write_text(
        "name: haiku\nversion: 3\ntemplate: 'Describe the image in {word_count} words. Page text: {alt_text}'\n"
        "options:\n  target: {unit: words, max: 17}\n  on_miss: {retries: 0}\n"
    )
    by_dir = CaptionStageConfig(backend={"type": "fake"}, formats=["haiku"], prompt_dirs=[str(tmp_path)]).build()
    by_path = CaptionStageConfig(backend={"type": "fake"}, formats=[str(tmp_path / "haiku.yaml")]).build()
    for stage in (by_dir, by_path):
        fmt = stage.formats[0]
        assert fmt.template.prompt_id == "haiku@3" and fmt.target.max == 17 and fmt.policy.retries == 0


def test_unknown_slot_is_a_config_error_naming_it(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: bad\ntemplate: 'Describe {subject} for {alt_text}'\n")
    with pytest.raises(ConfigError, match=r"\{subject\}"):
        CaptionStageConfig(backend={"type": "fake"}, formats=[str(tmp_path / "bad.yaml")]).build()


def test_malformed_target_is_a_config_error(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: bad\ntemplate: x\noptions:\n  target: {unit: lines, max: 3}\n")
    with pytest.raises(ConfigError, match="bad@1"):
        CaptionStageConfig(backend={"type": "fake"}, formats=[str(tmp_path / "bad.yaml")]).build()


def test_trim_keeps_whole_sentences_within_the_limit():
    text = "A red bus stops. People wait at the curb. A dog sleeps under a bench in the shade."
    out = trim(text, 9, count_words)
    assert out == "A red bus stops. People wait at the curb."
    assert count_words(out) <= 9


def test_trim_cuts_words_when_the_first_sentence_is_too_long():
    out = trim("one two three four five six seven eight", 4, count_words)
    assert out == "one two three four."


def test_trim_tags_at_item_boundaries():
    assert trim("dog, grass, red ball, sunny park, tree", 4, count_words, at="item") == "dog, grass, red ball"


def test_trim_with_clip_tokens_fits_the_context():
    long = " ".join(f"Sentence number {i} describes one more object in the scene." for i in range(20))
    out = trim(long, 77, count_clip_tokens)
    assert count_clip_tokens(out) <= 77 and out.endswith(".")
    assert count_clip_tokens(out) > 60  # it keeps as much as fits


def test_sentences_split_at_periods_and_newlines():
    assert split_sentences("A cat. A dog!\nA bird? Mr.Smith") == ["A cat.", "A dog!", "A bird?", "Mr.Smith"]


def test_truncate_to_budget():
    assert truncate_to("a b c d e", 3, count_words) == "a b c"
    assert truncate_to("a b", 3, count_words) == "a b"


def test_length_target_needs_a_positive_max():
    with pytest.raises(ValueError):
        LengthTarget(unit="words", max=0)


def test_trim_cuts_inside_a_word_only_when_no_word_fits():
    blob = "x$%&" * 60  # one "word" that CLIP splits into far more than 77 tokens
    out = trim(blob + " tail.", 77, count_clip_tokens)
    assert out and blob.startswith(out) and count_clip_tokens(out) <= 77
