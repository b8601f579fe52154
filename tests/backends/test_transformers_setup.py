"""Clear setup errors for models that are missing or incomplete, and `capmill models`."""

import shutil

import pytest
import yaml

from capmill.backends.transformers import TransformersConfig
from capmill.errors import SetupError


def test_unknown_hub_id_offline_says_how_to_fetch(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backend = TransformersConfig(model="nobody-here/no-such-model-xyz").build()
    with pytest.raises(SetupError) as err:
        backend.load()
    message = str(err.value)
    assert "nobody-here/no-such-model-xyz" in message
    assert "hf download nobody-here/no-such-model-xyz --local-dir" in message
    assert "model:" in message  # how to point the config at the local copy


def test_missing_folder():
    with pytest.raises(SetupError, match=r"the folder .*/no/such/folder does not exist") as err:
        TransformersConfig(model="./no/such/folder").build().load()
    assert "hf download" not in str(err.value)


def test_folder_without_processor(tiny_models, tmp_path):
    folder = tmp_path / "weights_only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(tiny_models / "qwen2_vl" / name, folder / name)
    with pytest.raises(SetupError, match="processor|tokenizer"):
        TransformersConfig(model=str(folder)).build().load()


def test_models_command_lists_sources_and_exit_code(tiny_models, tmp_path, capsys):
    from capmill.cli.main import main

    def write(stages):
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump({"input": {"type": "webdataset", "path": "x/*.tar"},
                                        "output": {"path": str(tmp_path / "out")}, "stages": stages}))
        return str(path)

    local = {"type": "caption", "formats": ["ssc"], "backend": {"type": "transformers", "model": str(tiny_models / "qwen2_vl")}}
    assert main(["models", write([local])]) == 0
    out = capsys.readouterr().out
    assert str(tiny_models / "qwen2_vl") in out and "yes" in out
    missing = {"type": "caption", "formats": ["ssc"], "backend": {"type": "transformers", "model": "nobody-here/nothing"}}
    assert main(["models", write([local, missing])]) == 1
    out = capsys.readouterr().out
    assert "nobody-here/nothing" in out and "NO" in out and "hf download nobody-here/nothing" in out
