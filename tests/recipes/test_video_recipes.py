"""The video recipes end to end: on a folder of mp4 files and on a webdataset of clips with the
tiny models (and the real whisper tiny.en for HowToCaption's speech), and resumed after kill -9."""

import json
import random
import subprocess
import sys

import pytest
import yaml

from capmill.cli.main import main
from capmill.config import apply_overrides, load_yaml
from capmill.recipes import find_recipe
from capmill.testing.videos import write_video_folder, write_video_webdataset
from tests.conftest import kill_while_working, snapshot

VIDEO_RECIPES = {"sharegpt4video": "sharegpt4video", "vdc": "vdc_detailed", "longcaptioning": "long_caption",
                 "howtocaption": "howtocaption"}
# Small settings that keep each run to seconds on a CPU; the recipe's own stages and prompts run.
# The tiny models write gibberish, which the output guards reject: `on_reject: keep` stores it
# flagged instead of dropping every sample (the guards still run and regenerate).
QUICK = {
    "sharegpt4video": ["video.sampling.max_frames=6", "stages.0.on_reject=keep"],
    "vdc": ["video.sampling.frames=4"],
    "longcaptioning": ["video.sampling.max_frames=8", "stages.0.segment_seconds=1", "stages.0.group_size=2",
                       "stages.0.words=40", "stages.0.aggregate_params={max_new_tokens: 16}", "stages.0.on_reject=keep"],
    # The tiny CLIP is random: its similarities say nothing, so nothing is filtered by them here.
    "howtocaption": ["video.sampling.max_frames=8", "stages.1.threshold=null", "stages.1.on_reject=keep"],
}


def _records(out):
    import pyarrow.parquet as pq

    for path in sorted(out.glob("*.parquet")):
        yield from (json.loads(r) for r in pq.read_table(path).column("record").to_pylist())


def _data(tmp_path, layout, name):
    speech = name == "howtocaption"
    try:
        if layout == "folder":
            folder = write_video_folder(tmp_path / "videos", n=2, scenes=2, scene_seconds=2.5, speech=speech)
            return [f"input={{type: folder, path: {folder}}}"]
        write_video_webdataset(tmp_path / "clips", shards=1, per_shard=2, scenes=2, scene_seconds=2.0, speech=speech)
        return [f"input.path={tmp_path}/clips/*.tar"]
    except Exception as e:  # SetupError without espeak-ng
        pytest.skip(f"needs espeak-ng for narrated test videos: {e}")


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["folder", "clips"])
@pytest.mark.parametrize("name", sorted(VIDEO_RECIPES))
def test_video_recipe_on_tiny_models(name, layout, tiny_models, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    sets = [*_data(tmp_path, layout, name), f"output.path={out}", *QUICK[name]]
    args = ["run", "--recipe", name, "--models", str(tiny_models), "--no-progress"]
    for item in sets:
        args += ["--set", item]
    rc = main(args)
    assert rc == 0, capsys.readouterr().err
    records = list(_records(out))
    assert len(records) == 2 and all(r["status"] == "ok" for r in records), [r["error"] for r in records]
    key = VIDEO_RECIPES[name]
    for record in records:
        assert record["media"]["kind"] == "video" and record["captions"][key]["text"]
    if name == "howtocaption":
        transcript = " ".join(r["captions"]["transcript"]["text"].lower() for r in records)
        assert "pepper" in transcript or "pan" in transcript, transcript  # real speech, really recognised
        assert all(r["captions"]["howtocaption"]["meta"]["segments"] for r in records)
    if name == "vdc":
        assert set(records[0]["captions"]) == {"vdc_short", "vdc_detailed", "vdc_main_object", "vdc_background", "vdc_camera"}


def _fake_config(name, data, out, delay=0.05):
    tree = load_yaml(find_recipe(name).path)
    fake = f"{{type: fake, delay_s: {delay}, words: 8}}"
    sets = [f"input.path={data}/*.tar", f"output.path={out}", "executor={type: local, batch_size: 1}",
            "video.sampling.max_frames=6", *QUICK[name]]
    for i, stage in enumerate(tree["stages"]):
        for field in ("backend", "summarizer", "aggregator", "llm", "scorer"):
            if field in stage:
                sets.append(f"stages.{i}.{field}={fake}")
    return apply_overrides(tree, sets)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(VIDEO_RECIPES))
def test_video_recipe_resumes_after_kill_9(name, tmp_path):
    """Clips cut at read time keep their keys across restarts: the resumed output is the
    uninterrupted one, file for file."""
    data = tmp_path / "data"
    write_video_webdataset(data, shards=4, per_shard=2, scenes=2, scene_seconds=1.5, tones=True, gop=5)
    reference = _fake_config(name, data, tmp_path / "ref")
    reference["input"]["clips"] = {"seconds": 1.5, "min_seconds": 0.5}
    reference["stages"] = [dict(s) for s in reference["stages"]]
    for stage in reference["stages"]:
        for field in ("backend", "summarizer", "aggregator", "llm", "scorer"):
            if isinstance(stage.get(field), dict):
                stage[field]["delay_s"] = 0
    (tmp_path / "ref.yaml").write_text(yaml.safe_dump(reference))
    assert main(["run", str(tmp_path / "ref.yaml"), "--no-progress"]) == 0

    config = _fake_config(name, data, tmp_path / "out", delay=0.2)  # seconds of work for the kills to land in
    config["input"]["clips"] = {"seconds": 1.5, "min_seconds": 0.5}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert kill_while_working(tmp_path / "run.yaml", tmp_path / "out", random.Random(17), rounds=4) >= 1
    done = subprocess.run([sys.executable, "-m", "capmill.cli.main", "run", str(tmp_path / "run.yaml"), "--no-progress"],
                          capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-2000:]
    assert snapshot(tmp_path / "out", frozenset({"_run.json"})) == snapshot(tmp_path / "ref", frozenset({"_run.json"}))
