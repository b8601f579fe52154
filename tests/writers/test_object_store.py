"""Outputs on an object store: the S3 API of moto in server mode, on 127.0.0.1, started here.

The same commit protocol holds without rename: temporaries uploaded under hidden names and
copied into place, the commit record written last, leases created with a conditional PUT. The
output, copied back, is the output of a local run; a run killed mid-way resumes to it; readers
of outputs read it where it is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from capmill.config import parse_config
from capmill.errors import OutputLockedError
from capmill.run import Share, run
from capmill.testing import write_webdataset
from tests.conftest import make_config, snapshot

pytest.importorskip("moto.server", reason="needs moto[server]: pip install 'capmill[dev]'")
pytest.importorskip("s3fs", reason="needs s3fs: pip install 'capmill[s3]'")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
RUN_JSON = frozenset({"_run.json"})


@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint on loopback, a bucket, and the environment a subprocess needs to reach it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    fs.mkdir("capmill-test")
    try:
        yield {"fs": fs, "env": env, "options": {"client_kwargs": {"endpoint_url": endpoint}}}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def stages():
    return [
        {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]},
        {"type": "clip_score", "backend": {"type": "fake"}, "fields": ["alt_text"]},
        {"type": "filter", "rules": [{"score": "clip:alt_text", "min": 0.0}]},
    ]


def s3_config(tmp_path, prefix, s3, **executor):
    cfg = make_config(tmp_path / "data", f"s3://capmill-test/{prefix}", stages=stages())
    cfg["output"].update(writers=["webdataset", "parquet", "sidecar"], rejects=True,
                         storage_options=s3["options"])
    cfg["executor"].update(executor)
    return cfg


def local_reference(tmp_path):
    cfg = make_config(tmp_path / "data", tmp_path / "ref", stages=stages())
    cfg["output"].update(writers=["webdataset", "parquet", "sidecar"], rejects=True)
    assert run(parse_config(cfg), progress=False).ok
    return tmp_path / "ref"


def fetch(s3, prefix, dest):
    s3["fs"].get(f"capmill-test/{prefix}/", str(dest), recursive=True)
    return dest


def keys(s3, prefix):
    return [k.split(f"capmill-test/{prefix}/", 1)[1] for k in s3["fs"].find(f"capmill-test/{prefix}")]


def test_an_s3_output_is_the_output_of_a_local_run(tmp_path, s3):
    write_webdataset(tmp_path / "data", shards=3, per_shard=4, corrupt=True)
    reference = local_reference(tmp_path)
    summary = run(parse_config(s3_config(tmp_path, "run1", s3)), progress=False)
    assert summary.ok and summary.shards_done == 3
    names = keys(s3, "run1")
    assert not [k for k in names if ".tmp-" in k or k.startswith(".")], names  # temporaries cleaned
    assert "_lock.json" not in names  # the lock was given back
    run_record = json.loads(s3["fs"].cat_file("capmill-test/run1/_run.json"))
    assert "storage_options" not in run_record["config"]["output"]  # no credentials in the record
    assert snapshot(fetch(s3, "run1", tmp_path / "copy"), RUN_JSON) == snapshot(reference, RUN_JSON)
    # A rerun finds every shard committed.
    again = run(parse_config(s3_config(tmp_path, "run1", s3)), progress=False)
    assert again.ok and again.shards_skipped == 3 and again.shards_done == 0


def test_fitted_stages_store_their_fit_on_s3_and_reuse_it(tmp_path, s3):
    write_webdataset(tmp_path / "data", shards=2, per_shard=5, photos=False)
    fitted = [{"type": "align_bin", "scorer": {"type": "fake", "dim": 16}}]

    def config(path):
        cfg = make_config(tmp_path / "data", path, stages=fitted)
        if str(path).startswith("s3://"):
            cfg["output"]["storage_options"] = s3["options"]
        return parse_config(cfg)

    reference = run(config(tmp_path / "ref"), progress=False)
    summary = run(config("s3://capmill-test/fitted"), progress=False)
    assert reference.ok and summary.ok and "(reused)" not in summary.fits[0]
    fits = [k for k in keys(s3, "fitted") if k.startswith("_fit/")]
    assert len(fits) == 1 and fits[0].startswith("_fit/align_bin-"), fits
    assert json.loads(s3["fs"].cat_file(f"capmill-test/fitted/{fits[0]}")) == \
        json.loads((tmp_path / "ref" / fits[0]).read_text())
    assert snapshot(fetch(s3, "fitted", tmp_path / "copy"), RUN_JSON) == snapshot(tmp_path / "ref", RUN_JSON)
    # A run that must redo a shard reads the stored fit instead of fitting again.
    s3["fs"].rm("capmill-test/fitted/_stats/00001.json")
    again = run(config("s3://capmill-test/fitted"), progress=False)
    assert again.ok and again.shards_done == 1 and again.fits[0].endswith("(reused)")


def test_readers_of_outputs_read_it_in_place(tmp_path, s3):
    write_webdataset(tmp_path / "data", shards=2, per_shard=3, photos=False)
    first = run(parse_config(s3_config(tmp_path, "read", s3)), progress=False)
    kept = first.samples - first.by_status.get("dropped", 0)  # dropped ones are in _rejects only
    assert first.ok and kept >= 3 and first.by_status.get("dropped")
    url = "s3://capmill-test/read"
    # input: {type: capmill} on the S3 output, into a local output.
    follow = {"input": {"type": "capmill", "path": url, "storage_options": s3["options"]},
              "output": {"path": str(tmp_path / "follow"), "writers": ["parquet"]},
              "stages": [{"type": "caption", "backend": {"type": "fake"}, "formats": ["dsc"]}]}
    summary = run(parse_config(follow), progress=False)
    assert summary.ok and summary.samples == kept
    env = {**os.environ, **s3["env"]}
    cli = [sys.executable, "-m", "capmill.cli.main"]
    inspect = subprocess.run([*cli, "inspect", url, "-n", "0"], capture_output=True, text=True, env=env)
    assert inspect.returncode == 0, inspect.stderr
    assert f"{kept} samples in 2 shard(s) (capmill)" in inspect.stdout
    report = subprocess.run([*cli, "report", url, "--out", str(tmp_path / "report.html")], capture_output=True,
                            text=True, env=env)
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "report.html").read_text()
    # The dropped samples come from _rejects/ on the store, into the report's gallery.
    import pyarrow.parquet as pq

    dropped = []
    for name in [k for k in keys(s3, "read") if k.startswith("_rejects/") and k.endswith(".parquet")]:
        with s3["fs"].open(f"capmill-test/read/{name}", "rb") as f:
            dropped += [json.loads(r)["key"] for r in pq.read_table(f, columns=["record"]).column("record").to_pylist()]
    assert dropped and all(json.dumps(key) in html for key in dropped)
    evaluated = subprocess.run([*cli, "eval", url, "--fields", "ssc", "--skip", "clip,retrieval,coco", "--json",
                                str(tmp_path / "eval.json")], capture_output=True, text=True, env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "eval.json").read_text())
    exported = subprocess.run([*cli, "export", url, "--target", "clip", "--out", str(tmp_path / "export")],
                              capture_output=True, text=True, env=env)
    assert exported.returncode == 0, exported.stderr
    assert list((tmp_path / "export").glob("*.tar"))


def test_killed_run_on_s3_resumes_to_the_uninterrupted_output(tmp_path, s3):
    write_webdataset(tmp_path / "data", shards=5, per_shard=3, photos=False)
    reference = local_reference(tmp_path)
    cfg = s3_config(tmp_path, "killed", s3, batch_size=1, shards_in_flight=1)
    slow = json.loads(json.dumps(cfg))
    slow["stages"][0]["backend"]["delay_s"] = 0.15
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(slow))
    proc = subprocess.Popen([sys.executable, "-m", "capmill.cli.main", "run", str(path), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **s3["env"]})
    fs = s3["fs"]
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not fs.find("capmill-test/killed/_stats"):
        time.sleep(0.1)
    time.sleep(0.3)  # somewhere inside the next shard
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    committed = {os.path.basename(k)[:-5] for k in fs.find("capmill-test/killed/_stats")}
    assert 1 <= len(committed) < 5
    assert "_lock.json" in keys(s3, "killed")  # the dead run's lock, taken over below
    # Resumed with the same config (the delay is hashed) in this process: the dead run's lock
    # is taken over (its pid is gone), its temporaries removed, the rest redone.
    resumed = run(parse_config(slow), progress=False)
    assert resumed.ok and resumed.shards_skipped == len(committed) and resumed.shards_done == 5 - len(committed)
    names = keys(s3, "killed")
    assert not [k for k in names if ".tmp-" in k], names
    assert snapshot(fetch(s3, "killed", tmp_path / "copy"), RUN_JSON) == snapshot(reference, RUN_JSON)


def test_the_lock_is_a_conditional_put(tmp_path, s3):
    from capmill.commit.lock import Lease, RunLock
    from capmill.writers.store import store_for

    store = store_for("s3://capmill-test/lock", s3["options"])
    first = RunLock("s3://capmill-test/lock", store=store)
    first.acquire()
    try:
        second = RunLock("s3://capmill-test/lock", store=store)
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
            second.acquire()  # alive: this very process
        assert first.still_held()
        record = json.loads(s3["fs"].cat_file("capmill-test/lock/_lock.json"))
        assert record["holder"] == first.token and record["mode"] == "exclusive"
        assert first.beat()  # the heartbeat is a PUT on the ETag it holds
    finally:
        first.release()
    assert not s3["fs"].exists("capmill-test/lock/_lock.json")
    # A dead holder's lock is taken over by replacing exactly that object.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    planted = {**first.record, "holder": "dead", "pid": dead.pid, "pid_start": None}
    s3["fs"].pipe_file("capmill-test/lock/_lock.json", json.dumps(planted).encode())
    taker = Lease("s3://capmill-test/lock/_lock.json", store=store)
    assert taker.acquire() is not None and taker.still_held()
    taker.release()


def test_cooperating_runs_share_an_s3_output(tmp_path, s3):
    write_webdataset(tmp_path / "data", shards=4, per_shard=2, photos=False)
    reference = local_reference(tmp_path)
    config = parse_config(s3_config(tmp_path, "coop", s3))
    results, errors = [], []

    def one():
        try:
            results.append(run(config, progress=False, share=Share(cooperate=True)))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=200)
    assert not errors, errors
    assert all(r.ok for r in results) and sum(r.shards_done for r in results) == 4
    names = keys(s3, "coop")
    assert not [k for k in names if k.startswith(("_claims/", "_cooperators/")) or ".tmp-" in k], names
    assert snapshot(fetch(s3, "coop", tmp_path / "copy"), RUN_JSON) == snapshot(reference, RUN_JSON)
