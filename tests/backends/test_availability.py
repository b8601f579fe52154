"""Where a model comes from: a folder that does not exist is named as such, never sent to the hub."""

import pytest

from capmill.backends.availability import HUB, MISSING, locate, missing_folder, resolve_model
from capmill.errors import SetupError


def test_a_path_that_is_no_folder_says_the_folder_does_not_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny" / "qwen2_vl").mkdir(parents=True)
    # owner/name in form, but `tiny/` is a folder here: a folder was meant, with a typo
    assert locate("tiny/qwen2vl").source == MISSING
    with pytest.raises(SetupError) as err:
        resolve_model("tiny/qwen2vl")
    message = str(err.value)
    assert f"the folder {tmp_path}/tiny/qwen2vl does not exist" in message
    assert "holds: qwen2_vl" in message and "Did you mean 'qwen2_vl'?" in message
    assert "hf download" not in message
    for path in ("/no/such/model", "./models/x", "~/no-such-model-here", "a/b/c", "smolvlm"):
        assert locate(path).source == MISSING, path
        assert "does not exist" in missing_folder(path)


def test_a_hub_id_is_still_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert locate("nobody-here/no-such-model-xyz").source == HUB
    with pytest.raises(SetupError, match="hf download nobody-here/no-such-model-xyz"):
        resolve_model("nobody-here/no-such-model-xyz")


def test_models_command_names_the_missing_folder(tmp_path, capsys):
    import yaml

    from capmill.cli.main import main

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "input": {"type": "webdataset", "path": "x.tar"}, "output": {"path": str(tmp_path / "o")},
        "stages": [{"type": "caption", "formats": ["ssc"], "backend": {"type": "transformers", "model": str(tmp_path / "nope")}}],
    }))
    assert main(["models", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"the folder {tmp_path}/nope does not exist" in out and "hf download" not in out
