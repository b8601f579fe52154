"""A run killed at any moment and rerun gives the output of an uninterrupted run."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import yaml

from capmill.config import parse_config
from capmill.run import run
from capmill.testing import write_webdataset
from tests.conftest import make_config, snapshot

pytestmark = pytest.mark.timeout(300)


def write_config(path, data, out, delay=0.02):
    config = make_config(data, out, stages=[
        {"type": "caption", "backend": {"type": "fake", "delay_s": delay}, "formats": ["ssc", "dsc"]},
    ])
    config["executor"]["batch_size"] = 2
    path.write_text(yaml.safe_dump(config))
    return path


def capmill(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "capmill.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)



def test_kill_9_at_random_moments_then_resume_matches_uninterrupted(tmp_path):
    data = tmp_path / "data"
    write_webdataset(data, shards=8, per_shard=6, photos=False)
    reference = tmp_path / "ref"
    ref_config = yaml.safe_load(write_config(tmp_path / "ref.yaml", data, reference, delay=0).read_text())
    assert run(parse_config(ref_config), progress=False).ok

    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", data, out, delay=0.15)  # ~4 s of "model" time in all
    rng = random.Random(1234)
    kills = 0
    for _ in range(5):
        proc = capmill("run", str(cfg), "--no-progress")
        time.sleep(rng.uniform(0.5, 1.6))  # interpreter start is ~0.5 s; kill anywhere after
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.communicate()
    assert kills >= 3
    proc = capmill("run", str(cfg), "--no-progress")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert not [p for p in out.rglob(".*") if ".tmp-" in p.name]  # no temporaries left
    assert snapshot(out) == snapshot(reference)
    for tar in out.glob("*.tar"):
        import tarfile

        with tarfile.open(tar) as t:  # complete archives, no duplicated members
            names = t.getnames()
        assert len(names) == len(set(names)) == 6 * 3
    assert len(list(out.glob('*.tar'))) == 8


def test_interrupt_keeps_committed_shards_and_leaves_no_partial_files(tmp_path):
    data = tmp_path / "data"
    write_webdataset(data, shards=6, per_shard=6, photos=False)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", data, out, delay=0.1)
    proc = capmill("run", str(cfg), "--no-progress")
    deadline = time.time() + 60
    stats = out / "_stats"
    while time.time() < deadline and not (stats.exists() and any(stats.glob("*.json"))):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    committed = {p.stem for p in (out / "_stats").glob("*.json")}
    assert committed and len(committed) < 6
    for name in committed:
        assert (out / f"{name}.tar").exists() and (out / f"{name}.parquet").exists()
    finals = {p.stem for p in out.glob("*.tar")}
    assert finals == committed  # nothing half-written under a final name
    assert not [p for p in out.rglob(".*") if ".tmp-" in p.name]


def test_rerun_skips_committed_shards(tmp_path, wds):
    config = parse_config(make_config(tmp_path / "data", tmp_path / "out"))
    first = run(config, progress=False)
    again = run(config, progress=False)
    assert first.shards_done == 3 and again.shards_done == 0 and again.shards_skipped == 3
    record = json.loads((tmp_path / "out" / "_run.json").read_text())
    assert record["config_hash"] and record["capmill_version"] and len(record["resumed"]) == 1
    assert record["models"] == {"0:caption": ["fake:fake"]}


def test_executor_settings_do_not_change_the_hash(tmp_path, wds):
    config = make_config(tmp_path / "data", tmp_path / "out")
    run(parse_config(config), progress=False)
    config["executor"]["batch_size"] = 7
    assert run(parse_config(config), progress=False).shards_skipped == 3
