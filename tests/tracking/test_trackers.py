"""Each tracker in its offline or file mode, read back with its own reader: W&B offline run files,
TensorBoard event files, an MLflow file store. No mocks: the real libraries write, the tests read."""

import glob
import json
import struct
import sys

import pytest
import yaml

import capmill
from capmill.cli.main import main as cli
from capmill.errors import ConfigError, SetupError
from capmill.progress import RunSummary
from capmill.testing import write_webdataset
from tests.conftest import make_config

STAGES = [
    {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc", "dsc"]},
    {"type": "clip_score", "backend": {"type": "fake", "dim": 8}},
    {"type": "filter", "rules": [{"score": "clip:dsc", "min": 0.0}]},
]
DROP = "drops/filter_clip_dsc_0"  # "filter: clip:dsc < 0" with the characters trackers rewrite replaced


def _config(tmp_path, tracking):
    write_webdataset(tmp_path / "data", shards=3, per_shard=8)
    cfg = make_config(tmp_path / "data", tmp_path / "out", stages=STAGES)
    cfg["tracking"] = tracking
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run_and_eval(path, tmp_path, capsys):
    """`capmill run --json`, then `capmill eval` on the output; returns the JSON summary."""
    assert cli(["run", str(path), "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert cli(["eval", str(tmp_path / "out"), "--fields", "alt_text,dsc", "--scorer", "{type: fake, dim: 16}",
                "--bags", "", "--skip", "coco"]) == 0
    err = capsys.readouterr().err
    assert "was not logged" not in err, err  # the tracker's failure is a note, not an error: show it
    return summary


def test_run_json_summary(tmp_path, wds, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(make_config(tmp_path / "data", tmp_path / "out")))
    assert cli(["run", str(path), "--no-progress", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # stdout is the JSON alone; the table goes to stderr
    assert summary["ok"] is True and summary["samples"] == 24 and summary["by_status"] == {"ok": 24}
    assert summary["shards"] == {"total": 3, "done": 3, "skipped": 0, "failed": 0, "elsewhere": 0}
    assert summary["captions"]["dsc"]["count"] == 24 and "ms/sample" in captured.err
    assert cli(["run", str(path), "--no-progress", "--json", "--dry-run"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {k: report[k] for k in ("dry_run", "shards_total", "input", "stages", "output", "already_committed")} == {
        "dry_run": True, "shards_total": 3, "input": "webdataset", "stages": 1, "output": str(tmp_path / "out"),
        "already_committed": 3}
    assert report["refused"] is None and report["would_process"] == []


@pytest.mark.slow
def test_tensorboard_event_files(tmp_path, capsys):
    pytest.importorskip("tensorboardX", reason="pip install 'capmill[tensorboard]'")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                            reason="the tensorboard package reads event files back")
    logdir = tmp_path / "tb"
    summary = _run_and_eval(_config(tmp_path, {"type": "tensorboard", "logdir": str(logdir), "project": "p",
                                               "name": "r"}), tmp_path, capsys)
    ea = event_accumulator.EventAccumulator(str(logdir / "p" / "r"), size_guidance={"scalars": 0, "histograms": 0,
                                                                                      "tensors": 0})
    ea.Reload()
    scalar = lambda tag: [(e.step, e.value) for e in ea.Scalars(tag)]  # noqa: E731
    assert scalar("shard/samples") == [(1, 8.0), (2, 8.0), (3, 8.0)]
    assert scalar("run/samples") == [(1, 8.0), (2, 16.0), (3, 24.0)]
    assert scalar("status/ok")[-1] == (3, summary["by_status"]["ok"])
    assert scalar(DROP)[-1] == (3, summary["by_status"]["dropped"]) and summary["by_status"]["dropped"] > 0
    assert all(v > 0 for _, v in scalar("shard/samples_per_s"))
    hist = ea.Histograms("captions/dsc/words")[-1]
    assert hist.step == 3 and hist.histogram_value.num == summary["captions"]["dsc"]["count"]
    evaluations = event_accumulator.EventAccumulator(str(logdir / "p" / "r" / "eval"))
    evaluations.Reload()
    assert evaluations.Scalars("eval/dsc/CLIPScore")[0].value == pytest.approx(
        json.loads((tmp_path / "out" / "_eval.json").read_text())["evaluations"][0]["metrics"]["dsc"]["CLIPScore"])
    assert "summary/text_summary" in ea.Tags()["tensors"]


@pytest.mark.slow
def test_mlflow_file_store(tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlflow", reason="pip install 'capmill[mlflow]'")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this to use a folder as its store
    uri = (tmp_path / "mlruns").as_uri()
    summary = _run_and_eval(_config(tmp_path, {"type": "mlflow", "tracking_uri": uri, "project": "capmill-test"}),
                            tmp_path, capsys)
    run_id = json.loads((tmp_path / "out" / "_tracking.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "out"
    assert client.get_experiment(run.info.experiment_id).name == "capmill-test"
    history = lambda key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]  # noqa: E731
    assert sorted(history("run/samples")) == [(1, 8.0), (2, 16.0), (3, 24.0)]
    assert run.data.metrics["status/ok"] == summary["by_status"]["ok"]
    assert run.data.metrics[DROP] == summary["by_status"]["dropped"]
    assert "captions/dsc/words_mean" in run.data.metrics and "eval/dsc/CLIPScore" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.json", "summary.json", "caption_lengths.json"} <= artifacts
    assert run.data.tags["capmill.config_hash"] == json.loads((tmp_path / "out" / "_run.json").read_text())["config_hash"]


def _wandb_records(path):
    """The records of a W&B run file (LevelDB-style log: 7-byte header, 32 KiB blocks, records
    with a 7-byte header of crc, length, type), parsed with W&B's own protobuf types."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, pending, out = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # full, last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            out.append(record)
            pending = b""
        elif kind in (2, 3):  # first, middle
            pending += chunk
    return out


def _items(record, kind):
    items = record.history.item if kind == "history" else record.summary.update
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


@pytest.mark.slow
def test_wandb_offline(tmp_path, capsys, monkeypatch):
    pytest.importorskip("wandb", reason="pip install 'capmill[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    files = tmp_path / "wandb-files"
    files.mkdir()
    summary = _run_and_eval(_config(tmp_path, {"type": "wandb", "project": "capmill-test", "dir": str(files)}),
                            tmp_path, capsys)
    run_id = json.loads((tmp_path / "out" / "_tracking.json").read_text())["run_id"]
    run_files = sorted(glob.glob(str(files / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb")))
    assert len(run_files) == 2  # the run, and the evaluation logged to the same run id
    records = _wandb_records(run_files[0])
    history = [_items(r, "history") for r in records if r.WhichOneof("record_type") == "history"]
    steps = [h for h in history if "run/samples" in h]
    assert [(h["_step"], h["run/samples"]) for h in steps] == [(1, 8), (2, 16), (3, 24)]
    assert steps[-1]["status/ok"] == summary["by_status"]["ok"] and steps[-1][DROP] == summary["by_status"]["dropped"]
    hist = [h for h in history if "captions/dsc/words/_type" in h][-1]
    assert hist["captions/dsc/words/_type"] == "histogram" and sum(hist["captions/dsc/words/values"]) == 24 - summary["by_status"]["dropped"]
    final = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            final.update(_items(r, "summary"))
    assert final["final"]["samples"] == 24 and final["final"]["by_status"] == summary["by_status"]
    config = [r for r in records if r.WhichOneof("record_type") == "run"][0].run
    assert config.run_id == run_id and config.project == "capmill-test"
    evaluation = [_items(r, "history") for r in _wandb_records(run_files[1]) if r.WhichOneof("record_type") == "history"]
    assert any("eval/dsc/CLIPScore" in h for h in evaluation)


def test_tracking_is_not_hashed_and_a_missing_package_stops_at_setup(tmp_path, wds, monkeypatch):
    cfg = make_config(tmp_path / "data", tmp_path / "out")
    assert capmill.Pipeline.from_config(cfg).run(progress=False).ok
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    with pytest.raises(SetupError, match=r"pip install 'capmill\[wandb\]'"):
        capmill.Pipeline.from_config(cfg, tracking={"type": "wandb"}).run(progress=False)
    pytest.importorskip("tensorboardX", reason="pip install 'capmill[tensorboard]'")
    resumed = capmill.Pipeline.from_config(cfg, tracking={"type": "tensorboard", "logdir": str(tmp_path / "tb")}).run(progress=False)
    assert resumed.ok and resumed.shards_skipped == 3  # same config hash: resumed, nothing redone
    with pytest.raises(ConfigError, match="inside the output directory"):
        capmill.Pipeline.from_config(cfg, tracking={"type": "tensorboard", "logdir": str(tmp_path / "out" / "tb")}).run()


def test_eval_without_the_tracker_package_still_evaluates(tmp_path, wds, monkeypatch, capsys):
    pytest.importorskip("tensorboardX", reason="pip install 'capmill[tensorboard]'")
    cfg = make_config(tmp_path / "data", tmp_path / "out", tracking={"type": "tensorboard", "logdir": str(tmp_path / "tb")})
    assert capmill.Pipeline.from_config(cfg).run(progress=False).ok
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # evaluated where the tracker is not installed
    assert cli(["eval", str(tmp_path / "out"), "--fields", "ssc", "--skip", "clip,retrieval,coco"]) == 0
    err = capsys.readouterr().err
    assert "tracking (tensorboard): the evaluation was not logged: SetupError" in err and "capmill[tensorboard]" in err
    assert json.loads((tmp_path / "out" / "_eval.json").read_text())["evaluations"][0]["metrics"]["ssc"]["captions"] == 24


def test_a_failing_listener_stops_alone_and_is_reported():
    summary = RunSummary(shards_total=2)
    seen = []

    def broken(stats, s):
        seen.append(stats["shard"])
        raise OSError("disk full")

    summary.listeners.append(broken)
    stats = {"shard": "00000", "samples": 4, "by_status": {"ok": 4}, "drops": {}, "seconds": {}}
    summary.add_shard(stats)
    summary.add_shard({**stats, "shard": "00001"})
    assert seen == ["00000"] and summary.samples == 8 and summary.shards_done == 2
    assert summary.warnings == ["test_a_failing_listener_stops_alone_and_is_reported.<locals>.broken stopped: OSError: disk full"]
    assert "warning: " in summary.render() and summary.to_dict()["warnings"] == summary.warnings
