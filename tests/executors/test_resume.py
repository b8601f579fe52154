"""A run killed at any moment and rerun gives the output of an uninterrupted run; two runs on
one output never both write; a server that dies mid-run leaves nothing transient committed."""

import io
import json
import random
import signal
import socket
import subprocess
import sys
import tarfile
import time

import pyarrow.parquet as pq
import pytest
import yaml

from capmill.config import parse_config
from capmill.run import run
from capmill.testing import write_webdataset
from capmill.testing.fault_server import Faults, FaultServer
from tests.conftest import kill_while_working, make_config, snapshot

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



@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_matches_uninterrupted(tmp_path):
    data = tmp_path / "data"
    write_webdataset(data, shards=8, per_shard=6, photos=False)
    reference = tmp_path / "ref"
    ref_config = yaml.safe_load(write_config(tmp_path / "ref.yaml", data, reference, delay=0).read_text())
    assert run(parse_config(ref_config), progress=False).ok

    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", data, out, delay=0.15)  # ~4 s of "model" time in all
    assert kill_while_working(cfg, out, random.Random(1234), rounds=5, within=(0.0, 1.1)) >= 3
    proc = capmill("run", str(cfg), "--no-progress")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert not [p for p in out.rglob(".*") if ".tmp-" in p.name]  # no temporaries left
    assert snapshot(out) == snapshot(reference)
    for tar in out.glob("*.tar"):
        with tarfile.open(tar) as t:  # complete archives, no duplicated members
            names = t.getnames()
        assert len(names) == len(set(names)) == 6 * 3
    assert len(list(out.glob('*.tar'))) == 8


@pytest.mark.slow
def test_interrupt_keeps_committed_shards_and_leaves_no_partial_files(tmp_path):
    data = tmp_path / "data"
    write_webdataset(data, shards=6, per_shard=6, photos=False)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", data, out, delay=0.2)  # seconds of work left after the first commit
    proc = capmill("run", str(cfg), "--no-progress")
    deadline = time.time() + 60
    stats = out / "_stats"
    while time.time() < deadline and not (stats.exists() and any(stats.glob("*.json"))):
        time.sleep(0.05)
    seen = len(list(stats.glob("*.json")))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, f"{seen} of 6 shards committed when interrupted\n{err}"
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


@pytest.mark.slow
def test_two_runs_on_one_output_the_second_refused_naming_the_first(tmp_path):
    data = tmp_path / "data"
    write_webdataset(data, shards=6, per_shard=4, photos=False)
    reference = tmp_path / "ref"
    assert run(parse_config(yaml.safe_load(write_config(tmp_path / "ref.yaml", data, reference, delay=0).read_text())),
               progress=False).ok
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", data, out, delay=0.1)
    first = capmill("run", str(cfg), "--no-progress")
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "_lock.json").exists() and first.poll() is None:
        time.sleep(0.02)
    assert (out / "_lock.json").exists(), first.communicate()[1]
    second = capmill("run", str(cfg), "--no-progress")
    _, err2 = second.communicate(timeout=120)
    _, err1 = first.communicate(timeout=120)
    assert second.returncode == 2, err2
    assert f"in use by another run: pid {first.pid} on host {socket.gethostname()}" in err2
    assert first.returncode == 0, err1  # its temporaries were left alone
    assert snapshot(out) == snapshot(reference)
    assert not (out / "_lock.json").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port: int, *args: str) -> subprocess.Popen:
    """The fault server in its own process, so that it can be killed for real."""
    proc = subprocess.Popen([sys.executable, "-m", "capmill.testing.fault_server", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == f"http://127.0.0.1:{port}/v1"
    return proc


def openai_config(tmp_path, data, out, base_url, **backend):
    stage = {"type": "caption", "formats": ["ssc", "dsc"], "backend": {
        "type": "openai", "base_url": base_url, "model": "fault-model", "concurrency": 4, "max_retries": 6,
        "backoff_s": 0.01, "backoff_max_s": 0.05, "attempt_timeout_s": 5.0, **backend}}
    config = make_config(data, out, stages=[stage])
    config["executor"]["batch_size"] = 2
    return config


def without_attempts(out):
    """snapshot() with the HTTP attempt count taken out of every caption's meta: how many tries a
    request needed depends on the faults met on the way, not on the data."""
    def clean(record):
        if isinstance(record.get("record"), str):  # a tar's KEY.json holds the record as a string
            record["record"] = clean(json.loads(record["record"]))
        for caption in record.get("captions", {}).values():
            caption.get("meta", {}).pop("attempts", None)
        return record

    files, tars, tables, stats = snapshot(out)
    members = {}
    for name, data in tars.items():
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members[name] = [(m.name, clean(json.loads(tar.extractfile(m).read())) if m.name.endswith(".json")
                              else tar.extractfile(m).read()) for m in tar.getmembers()]
    for rows in tables.values():
        for row in rows:
            row["record"] = clean(json.loads(row["record"]))
    return files, members, tables, stats


@pytest.mark.slow
def test_server_killed_and_restarted_mid_run_commits_nothing_transient(tmp_path):
    data = tmp_path / "data"
    write_webdataset(data, shards=6, per_shard=6, photos=False)
    with FaultServer() as clean:
        assert run(parse_config(openai_config(tmp_path, data, tmp_path / "ref", clean.base_url)), progress=False).ok
    port = free_port()
    out = tmp_path / "out"
    config = openai_config(tmp_path, data, out, f"http://127.0.0.1:{port}/v1", max_retries=2)
    config["reliability"] = {"breaker_after": 4}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    server = serve(port, "--latency", "0.1")
    proc = capmill("run", str(path), "--no-progress")
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None and not list((out / "_stats").glob("*.json")):
        time.sleep(0.02)
    server.kill()  # SIGKILL: connections reset, then refused
    server.wait()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "STOPPED" in err and f"backend openai fault-model at http://127.0.0.1:{port}/v1" in err
    committed = {p.stem for p in (out / "_stats").glob("*.json")}
    assert 1 <= len(committed) < 6, err
    for name in committed:  # nothing transient (nor an error of the dead server) committed
        assert {r["status"] for r in pq.read_table(out / f"{name}.parquet").to_pylist()} == {"ok"}
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    server = serve(port)
    try:
        proc = capmill("run", str(path), "--no-progress")
        _, err = proc.communicate(timeout=120)
    finally:
        server.terminate()
        server.wait()
    assert proc.returncode == 0, err
    rows = [r for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(rows) == 36 and {r["status"] for r in rows} == {"ok"}
    assert snapshot(out, frozenset({"_run.json"})) == snapshot(tmp_path / "ref", frozenset({"_run.json"}))


def wait_for(predicate, proc, timeout=60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not predicate():
        time.sleep(0.01)


@pytest.mark.slow
def test_kill_9_many_times_with_the_openai_backend_against_a_faulty_server(tmp_path):
    data = tmp_path / "data"
    write_webdataset(data, shards=30, per_shard=4, photos=False)
    with FaultServer() as clean:
        assert run(parse_config(openai_config(tmp_path, data, tmp_path / "ref", clean.base_url)), progress=False).ok
    out = tmp_path / "out"
    stats = out / "_stats"
    faults = Faults(rate_limit=0.1, retry_after_s=0.05, server_error=0.1, truncated=0.05)
    rng = random.Random(99)
    kills, runs, moments = 0, 0, []
    with FaultServer(faults, latency_s=0.1, seed=7) as server:
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(openai_config(tmp_path, data, out, server.base_url)))
        while kills < 22 and runs < 40:
            runs += 1
            committed = len(list(stats.glob("*.json"))) if stats.exists() else 0
            proc = capmill("run", str(path), "--no-progress")
            # A third of the kills anywhere from start-up on, a third once the run holds the
            # lock, a third just after it committed a shard.
            moment = runs % 3
            if moment == 0:
                time.sleep(rng.uniform(0.2, 1.5))
            elif moment == 1:
                wait_for(lambda: (out / "_lock.json").exists(), proc)
                time.sleep(rng.uniform(0.0, 0.6))
            else:
                wait_for(lambda: stats.exists() and len(list(stats.glob("*.json"))) > committed, proc)
                time.sleep(rng.uniform(0.0, 0.3))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                moments.append(moment)
            proc.communicate()
        assert kills >= 20 and set(moments) == {0, 1, 2}
        assert 0 < len(list(stats.glob("*.json"))) < 30
        for _ in range(3):  # a request may exhaust its retries: its shard is redone by the next run
            proc = capmill("run", str(path), "--no-progress")
            _, err = proc.communicate(timeout=180)
            if proc.returncode == 0:
                break
        assert proc.returncode == 0, err
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name] and not (out / "_lock.json").exists()
    for tar in out.glob("*.tar"):
        with tarfile.open(tar) as t:
            names = t.getnames()
        assert len(names) == len(set(names)) == 4 * 3
    assert without_attempts(out) == without_attempts(tmp_path / "ref")
