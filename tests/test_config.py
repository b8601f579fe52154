"""Config errors say what to change: valid keys, where a misplaced setting belongs, near names."""

import pytest

from capmill.config import parse_config
from capmill.errors import ConfigError
from tests.conftest import make_config

FAKE = {"type": "fake"}


def error(tmp_path, **sections) -> str:
    config = make_config(tmp_path, tmp_path / "o")
    for name, value in sections.items():
        config[name] = value
    with pytest.raises(ConfigError) as err:
        parse_config(config)
    return str(err.value)


def test_an_unknown_key_lists_the_valid_keys_of_its_section(tmp_path):
    message = error(tmp_path, output={"path": "o", "txt_field": "dsc"})
    assert "output: unknown key 'txt_field' (did you mean 'text_field'?)" in message
    assert "Valid keys here: image_ext, parquet_images, path, reencode, reencode_quality, rejects, storage_options, text_field, writers" in message
    message = error(tmp_path, stages=[{"type": "fuse", "backend": FAKE, "caption": "dsc", "temlpate": "veclip"}])
    assert "stages.0: unknown key 'temlpate' (did you mean 'template'?)" in message and "store_as" in message


@pytest.mark.parametrize("backend", [
    {"type": "transformers", "model": "m", "max_new_tokens": 200},
    {"type": "vllm", "model": "m", "max_new_tokens": 200},
    {"type": "openai", "model": "m", "max_new_tokens": 200},
])
def test_decoding_settings_at_the_backend_level_point_to_params(tmp_path, backend):
    message = error(tmp_path, stages=[{"type": "caption", "formats": ["ssc"], "backend": backend}])
    assert "stages.0.backend: unknown key 'max_new_tokens' (`max_new_tokens` is a setting of `params:` here; " \
           "write `params: {max_new_tokens: ...}`)" in message
    assert "Valid keys here:" in message and "params" in message


def test_decoding_settings_on_a_backend_without_params_point_to_the_stage(tmp_path):
    backend = {"type": "fake", "temperature": 0.7}
    message = error(tmp_path, stages=[{"type": "caption", "formats": ["ssc"], "backend": backend}])
    assert "unknown key 'temperature' (decoding settings are not a setting of this backend; give them to the " \
           "stage as `params: {temperature: ...}`)" in message


def test_settings_of_a_nested_block_say_where_they_belong(tmp_path):
    message = error(tmp_path, stages=[{"type": "caption", "formats": ["ssc"], "backend": FAKE, "temperature": 0.5, "gpus": 1}])
    assert "`temperature` is a setting of `params:` here" in message
    assert "`gpus` is a setting of `resources:` here" in message


def test_mistyped_types_and_choices_get_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown stage type 'captoin'; registered: .*\. Did you mean 'caption'\?"):
        parse_config(make_config(tmp_path, tmp_path / "o", stages=[{"type": "captoin"}]))
    with pytest.raises(ConfigError, match=r"unknown backend type 'transfomers'.*Did you mean 'transformers'\?"):
        parse_config(make_config(tmp_path, tmp_path / "o", stages=[
            {"type": "caption", "formats": ["ssc"], "backend": {"type": "transfomers", "model": "m"}}]))
    assert "Did you mean 'parquet'?" in error(tmp_path, input={"type": "parket", "path": "x"})
    assert "Did you mean 'local'?" in error(tmp_path, executor={"type": "locale"})
    assert "Did you mean 'sidecar'?" in error(tmp_path, output={"path": "o", "writers": ["sidecars"]})
    far = error(tmp_path, input={"type": "tarball", "path": "x"})
    assert "Did you mean" not in far and "'webdataset'" in far


def test_a_mistyped_caption_format_gets_a_suggestion(tmp_path):
    from capmill.chain import check_chain

    config = parse_config(make_config(tmp_path, tmp_path / "o", stages=[
        {"type": "caption", "formats": ["ssc", "dsc_pluss"], "backend": FAKE}]))
    with pytest.raises(ConfigError, match=r"stage 0 \(caption\): unknown formats template 'dsc_pluss'.*Did you mean 'dsc_plus'\?"):
        check_chain(config)


def test_edit_distance_counts_a_swap_as_one():
    from capmill.suggest import closest, edit_distance

    assert edit_distance("dcs", "dsc") == 1 and edit_distance("dsc", "dsc_plus") == 5
    assert closest("ssc", ["ssc", "dsc", "tags"]) == ["dsc"]  # an exact match is not a suggestion
    assert closest("xyzzy", ["dsc", "ssc"]) == []
