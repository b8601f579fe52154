"""The command line: run and inspect with their exit codes."""

import json
import subprocess
import sys

import pytest
import yaml

from capmill.cli.main import main
from tests.conftest import make_config


def write(tmp_path, config):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.slow
def test_issue_example_config_runs_as_written(tmp_path, monkeypatch):
    from capmill.testing import write_webdataset

    monkeypatch.chdir(tmp_path)
    write_webdataset("data", shards=3, per_shard=8)
    (tmp_path / "run.yaml").write_text(
        'input: {type: webdataset, path: "data/{00000..00002}.tar"}\n'
        "output: {path: out, writers: [webdataset, parquet]}\n"
        "executor: {type: local, batch_size: 8}\n"
        "stages:\n"
        "  - {type: caption, backend: {type: fake}, formats: [ssc, dsc]}\n"
    )
    proc = subprocess.run([sys.executable, "-m", "capmill.cli.main", "run", "run.yaml"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "24 in" in proc.stderr and "ok" in proc.stderr and "caption" in proc.stderr  # summary table
    assert "capmill: 0 samples" not in proc.stderr
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["00000.parquet", "00000.tar", "00001.parquet", "00001.tar", "00002.parquet", "00002.tar", "_run.json", "_stats"]
    import tarfile

    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        row = json.loads(tar.extractfile("000000.json").read())
        assert tar.extractfile("000000.txt").read().decode() == row["alt_text"] == row["text"]
    assert set(row) == {"key", "alt_text", "text", "status", "error", "record"}  # fixed fields + the full record
    record = json.loads(row["record"])
    assert set(record) >= {"key", "alt_text", "captions", "scores", "status", "error"}
    assert set(record["captions"]) == {"ssc", "dsc"} and set(record["captions"]["dsc"]) >= {"text", "model", "prompt_id"}


def test_set_limit_and_dry_run(tmp_path, wds, capsys):
    cfg = write(tmp_path, make_config(tmp_path / "data", tmp_path / "out"))
    assert main(["run", cfg, "--dry-run"]) == 0
    assert "3 shard(s)" in capsys.readouterr().out and not (tmp_path / "out").exists()
    assert main(["run", cfg, "--limit", "5", "--set", "stages.0.formats=[ssc]", "--no-progress"]) == 0
    assert "samples: 5 in" in capsys.readouterr().err
    run = json.loads((tmp_path / "out" / "_run.json").read_text())
    assert run["config"]["stages"][0]["formats"] == ["ssc"]


def test_exit_codes(tmp_path, wds, capsys):
    cfg = make_config(tmp_path / "data", tmp_path / "out")
    path = write(tmp_path, cfg)
    assert main(["run", path, "--no-progress"]) == 0
    # another config into the same output: refused (2), accepted with --force (0)
    assert main(["run", path, "--set", "stages.0.formats=[ssc]", "--no-progress"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["run", path, "--set", "stages.0.formats=[ssc]", "--force", "--no-progress"]) == 0
    # invalid config (2) with a message naming the field
    assert main(["run", path, "--set", "executor.batch_size=0"]) == 2
    assert "executor.local.batch_size: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["run", path, "--set", "stages.5.type=x"]) == 2
    # a failed shard: exit 1
    cfg["input"]["path"] = str(tmp_path / "data" / "{00000..00003}.tar")
    cfg["output"]["path"] = str(tmp_path / "out2")
    assert main(["run", write(tmp_path, cfg), "--no-progress"]) == 1
    assert "FAILED shard 00003" in capsys.readouterr().err


def test_inspect_inputs_and_outputs(tmp_path, wds, capsys):
    assert main(["inspect", wds[0], "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "8 samples in 1 shard(s) (webdataset)" in out and '"key": "000000"' in out
    cfg = write(tmp_path, make_config(tmp_path / "data", tmp_path / "out"))
    main(["run", cfg, "--no-progress"])
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "out"), "-n", "0"]) == 0
    out = capsys.readouterr().out
    assert "24 samples in 3 shard(s) (capmill)" in out and "caption ssc: 24" in out
    assert main(["inspect", str(tmp_path / "nothing.xyz")]) == 2


def test_progress_lines_when_not_a_tty(tmp_path):
    import io

    from capmill.progress import Progress

    stream = io.StringIO()
    p = Progress(total_shards=4, stream=stream, interval=0.0)
    p.advance(samples=10)
    p.advance(samples=10, shards=1)
    lines = stream.getvalue().splitlines()
    assert lines and lines[-1].startswith("capmill: 20 samples") and "shards 1/4" in lines[-1] and "ETA" in lines[-1]


def test_inspect_into_a_closed_pipe_exits_cleanly(wds):
    """`capmill inspect DATA | head -1`: the reader leaves early; no traceback, exit 0."""
    proc = subprocess.Popen([sys.executable, "-m", "capmill.cli.main", "inspect", wds[0], "-n", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away with most of the output unread
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in stderr, stderr
