"""The audio recipes end to end: on a folder of audio files and on a webdataset of long recordings
cut into clips, with the tiny models (tiny Qwen2-Audio, Qwen2 and CLAP; the real whisper tiny.en
for speech), and resumed after kill -9."""

import json
import random
import subprocess
import sys

import pytest
import yaml

from capmill.cli.main import main
from capmill.config import apply_overrides, load_yaml
from capmill.recipes import find_recipe
from capmill.testing.audio import write_audio_folder, write_audio_webdataset
from tests.conftest import kill_while_working, snapshot

AUDIO_RECIPES = {"audiosetcaps": "audiosetcaps", "slam_aac": "clap_refine", "autocap": "autocap", "synthio": "synthio.0"}
# Small settings that keep each run to seconds on a CPU; the recipe's own stages and prompts run.
# The tiny models write gibberish, which the output guards reject: `on_reject: keep` stores it
# flagged instead of dropping every sample (the guards still run and regenerate).
QUICK = {
    "audiosetcaps": ["stages.0.params={max_new_tokens: 12}", "stages.0.llm_params={max_new_tokens: 16}",
                     "stages.0.on_reject=keep"],
    # Cut at 8 tokens, every tiny candidate would be flagged truncated and left out of the ranking.
    "slam_aac": ["stages.0.settings.0.params={max_new_tokens: 8}", "stages.0.guards={skip: [truncated]}",
                 "stages.0.settings.0.sweep={num_beams: [2, 3, 4]}", "stages.1.top_k=3"],
    "autocap": ["stages.0.on_reject=keep", "stages.0.params={max_new_tokens: 16}"],
    "synthio": ["stages.0.on_reject=keep", "stages.0.params={max_new_tokens: 16}", "stages.1.n=3",
                "stages.1.params={max_new_tokens: 24}", "stages.1.rounds=1", "stages.1.on_reject=keep"],
}
BACKENDS = ("backend", "llm", "scorer", "captioners")


def _records(out):
    import pyarrow.parquet as pq

    for path in sorted(out.glob("*.parquet")):
        yield from (json.loads(r) for r in pq.read_table(path).column("record").to_pylist())


def _data(tmp_path, layout):
    if layout == "folder":
        folder = write_audio_folder(tmp_path / "sounds", n=2)
        return [f"input={{type: folder, path: {folder}}}"]
    # Two 5-second recordings, each cut into two clips of 2.5 s at read time.
    write_audio_webdataset(tmp_path / "long", shards=1, per_shard=2, seconds=5.0)
    return [f"input.path={tmp_path}/long/*.tar", "input.clips={seconds: 2.5, min_seconds: 1.0}"]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["folder", "clips"])
@pytest.mark.parametrize("name", sorted(AUDIO_RECIPES))
def test_audio_recipe_on_tiny_models(name, layout, tiny_models, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    sets = [*_data(tmp_path, layout), f"output.path={out}", *QUICK[name]]
    args = ["run", "--recipe", name, "--models", str(tiny_models), "--no-progress"]
    for item in sets:
        args += ["--set", item]
    rc = main(args)
    assert rc == 0, capsys.readouterr().err
    records = list(_records(out))
    expected = 2 if layout == "folder" else 4
    assert len(records) == expected and all(r["status"] == "ok" for r in records), [r["error"] for r in records]
    key = AUDIO_RECIPES[name]
    models = {str(tiny_models / f) for f in ("qwen2_audio", "qwen2_lm")}
    for record in records:
        assert record["media"]["kind"] == "audio" and record["captions"][key]["text"]
        assert record["captions"][key]["model"] in models
        if layout == "clips":
            assert record["media"]["ext"] == "flac" and record["media"]["clip"]["end"] - record["media"]["clip"]["start"] == 2.5
    meta = records[0]["captions"][key]["meta"]
    if name == "audiosetcaps":
        assert [qa["aspect"] for qa in meta["qa"]] == ["sounds", "speech", "music", "scene"]
        assert meta["scorer"] == str(tiny_models / "clap") and isinstance(meta["score"], float)
    if name == "slam_aac":
        assert meta["scorers"] == {"scorer": str(tiny_models / "clap")}
        beams = [records[0]["captions"][r["name"]]["meta"]["setting"]["params"]["num_beams"] for r in meta["ranking"]]
        assert sorted(beams) == [2, 3, 4]
    if name == "synthio":
        assert {"synthio.0", "dsc"} <= set(records[0]["captions"]) and "bar" in meta


@pytest.mark.slow
def test_speech_in_audio_is_transcribed_by_the_real_whisper(tmp_path, capsys):
    """The asr stage takes audio samples: espeak-ng sentences, recognised by the real tiny.en."""
    pytest.importorskip("faster_whisper")
    try:
        folder = write_audio_folder(tmp_path / "speech", n=2, speech=True)
    except Exception as e:  # SetupError without espeak-ng
        pytest.skip(f"needs espeak-ng for spoken test clips: {e}")
    config = {"input": {"type": "folder", "path": folder}, "output": {"path": str(tmp_path / "out")},
              "stages": [{"type": "asr", "backend": {"type": "faster_whisper", "model": "bundled"}},
                         {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"], "media": "audio"}]}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "run.yaml"), "--no-progress"]) == 0, capsys.readouterr().err
    records = {r["key"]: r for r in _records(tmp_path / "out")}
    heard = records["snd0000"]["captions"]["transcript"]["text"].lower()
    assert "dog" in heard and "garden" in heard, heard  # "The dog is barking in the garden."
    assert "kitchen" in records["snd0001"]["captions"]["transcript"]["text"].lower()
    # The waveform stayed for the caption stage after it (an audio sample's, unlike a video's soundtrack).
    assert all(r["captions"]["ssc"]["prompt_id"] == "ssc@1:audio" for r in records.values())


def _fake_config(name, data, out, delay=0.05):
    tree = load_yaml(find_recipe(name).path)
    fake = f"{{type: fake, delay_s: {delay}, words: 8}}"
    sets = [f"input.path={data}/*.tar", f"output.path={out}", "executor={type: local, batch_size: 1}", *QUICK[name]]
    for i, stage in enumerate(tree["stages"]):
        for field in BACKENDS:
            if field == "captioners" and field in stage:
                sets.append(f"stages.{i}.captioners=[{fake}]")
            elif field in stage:
                sets.append(f"stages.{i}.{field}={fake}")
    return apply_overrides(tree, sets)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(AUDIO_RECIPES))
def test_audio_recipe_resumes_after_kill_9(name, tmp_path):
    """Clips cut at read time keep their keys and bytes across restarts: the resumed output is
    the uninterrupted one, file for file."""
    data = tmp_path / "data"
    write_audio_webdataset(data, shards=4, per_shard=2, seconds=3.0)
    clips = {"seconds": 1.5, "min_seconds": 0.5}
    reference = _fake_config(name, data, tmp_path / "ref")
    reference["input"]["clips"] = clips
    for stage in reference["stages"]:
        for field in BACKENDS:
            for backend in stage.get(field) if isinstance(stage.get(field), list) else [stage.get(field)]:
                if isinstance(backend, dict):
                    backend["delay_s"] = 0
    (tmp_path / "ref.yaml").write_text(yaml.safe_dump(reference))
    assert main(["run", str(tmp_path / "ref.yaml"), "--no-progress"]) == 0

    config = _fake_config(name, data, tmp_path / "out", delay=0.2)  # seconds of work for the kills to land in
    config["input"]["clips"] = clips
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert kill_while_working(tmp_path / "run.yaml", tmp_path / "out", random.Random(23), rounds=4) >= 1
    done = subprocess.run([sys.executable, "-m", "capmill.cli.main", "run", str(tmp_path / "run.yaml"), "--no-progress"],
                          capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-2000:]
    assert snapshot(tmp_path / "out", frozenset({"_run.json"})) == snapshot(tmp_path / "ref", frozenset({"_run.json"}))
