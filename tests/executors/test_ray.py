"""The Ray executor gives the records, files and commit behaviour of a local run.

One private Ray cluster on 127.0.0.1 serves the whole module (starting one costs ~5 s); each
test compares a Ray run with a local run of the same config, file by file and record by record.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from typing import Literal

import pyarrow.parquet as pq
import pytest
import yaml

from capmill.components import StageConfig
from capmill.config import parse_config
from capmill.errors import SetupError
from capmill.keys import StageIO
from capmill.run import run
from capmill.sample import Sample
from capmill.stages.base import RunContext, Stage
from capmill.testing import write_webdataset
from tests.conftest import cuda_available, snapshot

# _run.json names the executor, the one thing that may differ between the two runs.
RUN_JSON = frozenset({"_run.json"})

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


class FaultStageConfig(StageConfig):
    """Test double: a stage that fails on purpose, in the ways a worker can fail."""

    type: Literal["fault"] = "fault"
    # SIGKILL the process running this stage on the first sample whose key is `kill_at`, once:
    # the marker file is created first, so the restarted worker passes through.
    kill_at: str | None = None
    kill_marker: str | None = None
    raise_on: list[str] = []
    fail_setup: bool = False
    # Record in each sample's meta the GPUs Ray gave the process running this stage.
    report_gpus: bool = False

    def build(self) -> FaultStage:
        return FaultStage(self)

    def io(self, available) -> StageIO:
        return StageIO()  # writes only its own meta


class FaultStage(Stage):
    config: FaultStageConfig

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        if self.config.fail_setup:
            raise SetupError("fault stage: model /nowhere not found; fetch it with `capmill models pull`")

    def process_one(self, sample: Sample) -> Sample:
        cfg = self.config
        if sample.key == cfg.kill_at and not os.path.exists(cfg.kill_marker):
            open(cfg.kill_marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        if sample.key in cfg.raise_on:
            raise ValueError(f"cannot handle {sample.key}")
        sample.meta["fault_stage"] = "passed"
        if cfg.report_gpus:
            import ray

            sample.meta["ray_gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
        return sample


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray.data", reason="needs ray[data]: pip install 'capmill[ray]'")
    # Workers import this module to unpickle the test double stage.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, ROOT, os.environ.get("PYTHONPATH")) if p)
    import ray

    from capmill.executors.ray import start_local_cluster, stop_local_cluster

    # Logical CPUs: shard owners plus pooled stage actors (on 2 cores).
    start_local_cluster(num_cpus=6, object_store_memory_gb=0.2, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        stop_local_cluster()


def config(data, out, stages, executor="local", **output):
    return {
        "input": {"type": "webdataset", "path": f"{data}/*.tar"},
        "output": {"path": str(out), "writers": ["webdataset", "parquet"], **output},
        "executor": {"type": executor, "batch_size": 4},
        "stages": stages,
    }



def run_both(tmp_path, stages, **output):
    data = tmp_path / "data"
    local = run(parse_config(config(data, tmp_path / "local", stages, **output)), progress=False)
    on_ray = run(parse_config(config(data, tmp_path / "ray", stages, "ray", **output)), progress=False)
    return local, on_ray


def test_cluster_listens_on_loopback_only(ray_cluster):
    import ray

    assert ray_cluster.startswith("127.0.0.1:")
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}


def test_same_records_files_and_stats_as_local(tmp_path, ray_cluster):
    write_webdataset(tmp_path / "data", shards=3, per_shard=8, corrupt=True)
    stages = [
        {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc", "dsc"]},
        FaultStageConfig(raise_on=["000009"]),  # a stage that raises on one sample
        {"type": "clip_score", "backend": {"type": "fake"}, "fields": ["alt_text", "dsc"]},
        {"type": "filter", "rules": [{"score": "clip:alt_text", "min": 0.0}]},
    ]
    local, on_ray = run_both(tmp_path, stages, rejects=True)
    assert snapshot(tmp_path / "ray", RUN_JSON) == snapshot(tmp_path / "local", RUN_JSON)
    # The comparison covers every kind of row: written, failed in decode, failed in a stage, dropped.
    rows = pq.read_table(tmp_path / "ray" / "00001.parquet").to_pylist()
    failed = next(r for r in rows if r["key"] == "000009")
    assert failed["status"] == "stage_error" and "fault: ValueError: cannot handle 000009" in failed["error"]
    statuses = {r["status"] for p in (tmp_path / "ray").glob("*.parquet") for r in pq.read_table(p).to_pylist()}
    assert {"ok", "decode_error", "stage_error"} <= statuses
    assert on_ray.drops and on_ray.drops == local.drops
    assert (on_ray.shards_done, on_ray.samples, on_ray.by_status) == (local.shards_done, local.samples, local.by_status)
    assert set(on_ray.seconds) == set(local.seconds) and {"read", "decode", "caption", "fault", "write"} <= set(on_ray.seconds)
    assert "caption" in on_ray.render() and on_ray.ok


def test_readme_quickstart_config_runs_on_ray_by_changing_the_executor_line(tmp_path, ray_cluster):
    write_webdataset(tmp_path / "data", shards=3, per_shard=5)
    quickstart = (
        f'input: {{type: webdataset, path: "{tmp_path}/data/{{00000..00002}}.tar"}}\n'
        "output: {path: OUT, writers: [webdataset, parquet]}\n"
        "executor: {type: local, batch_size: 8}\n"
        "stages:\n  - {type: caption, backend: {type: fake}, formats: [ssc, dsc]}\n"
    )
    local_cfg = yaml.safe_load(quickstart.replace("OUT", str(tmp_path / "local")))
    ray_cfg = yaml.safe_load(quickstart.replace("OUT", str(tmp_path / "ray"))
                             .replace("executor: {type: local, batch_size: 8}", "executor: {type: ray, batch_size: 8}"))
    assert run(parse_config(local_cfg), progress=False).ok
    assert run(parse_config(ray_cfg), progress=False).ok
    assert snapshot(tmp_path / "ray", RUN_JSON) == snapshot(tmp_path / "local", RUN_JSON)


def test_unreadable_shard_is_named_and_the_others_commit(tmp_path, ray_cluster):
    write_webdataset(tmp_path / "data", shards=3, per_shard=4, photos=False)
    bad = tmp_path / "data" / "00001.tar"
    bad.write_bytes(bad.read_bytes()[:700])  # cut inside a member
    stages = [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}]
    local, on_ray = run_both(tmp_path, stages)
    assert set(on_ray.failed_shards) == {"00001"} and on_ray.failed_shards == local.failed_shards
    assert str(bad) in on_ray.failed_shards["00001"]
    assert sorted(p.stem for p in (tmp_path / "ray" / "_stats").glob("*.json")) == ["00000", "00002"]
    assert snapshot(tmp_path / "ray", RUN_JSON) == snapshot(tmp_path / "local", RUN_JSON)


def test_worker_killed_mid_shard_is_replaced_and_its_shard_redone_once(tmp_path, ray_cluster):
    write_webdataset(tmp_path / "data", shards=3, per_shard=8, photos=False)
    marker = tmp_path / "killed"
    stages = lambda: [  # noqa: E731
        {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]},
        FaultStageConfig(kill_at="000013", kill_marker=str(marker)),  # fifth sample of shard 00001
    ]
    on_ray = run(parse_config(config(tmp_path / "data", tmp_path / "ray", stages(), "ray")), progress=False)
    assert marker.exists()  # the worker did die
    assert on_ray.ok and on_ray.shards_done == 3 and on_ray.samples == 24
    # The reference, with the marker in place so the double passes through.
    assert run(parse_config(config(tmp_path / "data", tmp_path / "local", stages())), progress=False).ok
    assert snapshot(tmp_path / "ray", RUN_JSON) == snapshot(tmp_path / "local", RUN_JSON)
    for tar in (tmp_path / "ray").glob("*.tar"):
        with tarfile.open(tar) as t:
            names = t.getnames()
        assert len(names) == len(set(names)) == 8 * 3  # whole, and nothing twice


def committed_or_absent(out, reference):
    """Every shard with a commit record has the reference's files, byte for byte."""
    for stats in (out / "_stats").glob("*.json"):
        for name in json.loads(stats.read_text())["outputs"]:
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.slow
def test_driver_killed_at_random_moments_keeps_every_committed_shard_and_resumes(tmp_path, ray_cluster):
    import random

    write_webdataset(tmp_path / "data", shards=6, per_shard=4, photos=False)
    slow = [{"type": "caption", "backend": {"type": "fake", "delay_s": 0.25}, "formats": ["ssc"]}]
    fast = [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}]
    reference = tmp_path / "local"
    assert run(parse_config(config(tmp_path / "data", reference, fast)), progress=False).ok

    out = tmp_path / "ray"
    cfg = config(tmp_path / "data", out, slow, "ray")
    # Two owners: shards commit one pair after another while the rest still runs.
    cfg["executor"].update(address=ray_cluster, batch_size=1, shards_in_flight=2)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rng = random.Random(7)
    seen_partial, kills = False, 0
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-m", "capmill.cli.main", "run", str(path), "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if attempt == 0:  # the first kill comes right after the first commit
            deadline = time.time() + 90
            while time.time() < deadline and proc.poll() is None and not list((out / "_stats").glob("*.json")):
                time.sleep(0.05)
            assert proc.poll() is None, proc.communicate()[1][-3000:]
        else:  # anywhere later; a run that got to the end before its moment is not killed
            time.sleep(rng.uniform(1.0, 4.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _, err = proc.communicate()
        committed = {p.stem for p in (out / "_stats").glob("*.json")}
        seen_partial |= 1 <= len(committed) < 6
        committed_or_absent(out, reference)
    assert kills >= 2 and seen_partial  # commits stream: a kill found some shards committed and others not

    # The delay is in the hashed config; resume the same config in this process.
    before = {p.stem for p in (out / "_stats").glob("*.json")}
    resumed = run(parse_config({**cfg, "executor": {"type": "ray", "batch_size": 4}}), progress=False)
    assert resumed.ok and resumed.shards_skipped == len(before) and resumed.shards_done == 6 - len(before)
    assert not [p for p in out.rglob(".*") if ".tmp-" in p.name]
    assert snapshot(out, RUN_JSON) == snapshot(reference, RUN_JSON)


def marked_processes(mark: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if mark.encode() in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_driver_takes_its_private_cluster_with_it(tmp_path):
    """No `address`: the run starts its own cluster; SIGKILL the driver mid-run and every process
    of that cluster is gone within seconds, the committed shards are whole, the rerun resumes."""
    import uuid

    write_webdataset(tmp_path / "data", shards=4, per_shard=4, photos=False)
    slow = [{"type": "caption", "backend": {"type": "fake", "delay_s": 0.3}, "formats": ["ssc"]}]
    fast = [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}]
    reference = tmp_path / "local"
    assert run(parse_config(config(tmp_path / "data", reference, fast)), progress=False).ok
    out = tmp_path / "ray"
    cfg = config(tmp_path / "data", out, slow, "ray")
    cfg["executor"].update(batch_size=1, shards_in_flight=1, num_cpus=2, object_store_memory_gb=0.1)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    mark = f"CAPMILL_TEST_MARK={uuid.uuid4().hex}"
    env = {**os.environ, mark.split("=")[0]: mark.split("=")[1], "PYTHONPATH": os.pathsep.join((HERE, ROOT))}
    proc = subprocess.Popen([sys.executable, "-m", "capmill.cli.main", "run", str(path), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 150
    while time.time() < deadline and proc.poll() is None and not list((out / "_stats").glob("*.json")):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert len(marked_processes(mark)) > 3  # the driver, GCS, raylet, workers …
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = time.time()
    while marked_processes(mark) and time.time() - killed_at < 10:
        time.sleep(0.1)
    gone_after = time.time() - killed_at
    assert not marked_processes(mark), [open(f"/proc/{p}/cmdline").read()[:120] for p in marked_processes(mark)]
    assert gone_after < 5
    committed = {p.stem for p in (out / "_stats").glob("*.json")}
    assert 1 <= len(committed) < 4
    committed_or_absent(out, reference)
    resumed = run(parse_config({**cfg, "executor": {"type": "local", "batch_size": 4}}), progress=False)
    assert resumed.ok and resumed.shards_skipped == len(committed)
    assert snapshot(out, RUN_JSON) == snapshot(reference, RUN_JSON)


def test_pooled_stages_give_the_same_records_as_local(tmp_path, ray_cluster):
    """Stages given a concurrency run in their own actor pools, fed by the shard owners."""
    write_webdataset(tmp_path / "data", shards=3, per_shard=6, corrupt=True)
    stages = [
        {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"], "resources": {"concurrency": 2}},
        FaultStageConfig(raise_on=["000009"], resources={"concurrency": 1, "cpus": 0.5}),
        {"type": "clip_score", "backend": {"type": "fake"}, "fields": ["alt_text", "ssc"]},
        {"type": "filter", "rules": [{"score": "clip:alt_text", "min": 0.0}]},
    ]
    local, on_ray = run_both(tmp_path, stages, rejects=True, reencode="png")
    assert snapshot(tmp_path / "ray", RUN_JSON) == snapshot(tmp_path / "local", RUN_JSON)
    assert on_ray.by_status == local.by_status and on_ray.by_status["stage_error"] == 1


def test_retry_errors_on_ray_rewrites_to_the_uninterrupted_output(tmp_path, ray_cluster):
    pytest.importorskip("aiohttp")
    from capmill.testing.fault_server import Faults, FaultServer

    write_webdataset(tmp_path / "data", shards=2, per_shard=6, photos=False)
    with FaultServer(seed=5) as server:
        stages = [{"type": "caption", "formats": ["ssc"], "backend": {
            "type": "openai", "base_url": server.base_url, "model": server.model, "max_retries": 0,
            "backoff_s": 0.01, "backoff_max_s": 0.02}}]

        def cfg(out, executor):
            c = config(tmp_path / "data", out, stages, executor)
            c["reliability"] = {"breaker_after": 0, "transient_budget": 1.0}
            return parse_config(c)

        assert run(cfg(tmp_path / "local", "local"), progress=False).ok
        server.faults = Faults(server_error=0.4)
        first = run(cfg(tmp_path / "ray", "ray"), progress=False)
        assert first.shards_done == 2 and first.retryable and not first.ok
        server.faults = Faults()
        server.reset()
        retried = run(cfg(tmp_path / "ray", "ray"), retry_errors=True, progress=False)
        assert retried.ok, retried.render()
        assert len(server.events) == sum(first.retryable.values())  # only the retryable samples
    assert snapshot(tmp_path / "ray", RUN_JSON) == snapshot(tmp_path / "local", RUN_JSON)


def test_limit_takes_the_same_first_samples_as_local(tmp_path, ray_cluster):
    write_webdataset(tmp_path / "data", shards=3, per_shard=4, photos=False)
    stages = [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}]
    data = tmp_path / "data"
    local = run(parse_config(config(data, tmp_path / "local", stages)), progress=False, limit=6)
    on_ray = run(parse_config(config(data, tmp_path / "ray", stages, "ray")), progress=False, limit=6)
    assert local.samples == on_ray.samples == 6
    assert snapshot(tmp_path / "ray", RUN_JSON) == snapshot(tmp_path / "local", RUN_JSON)


def test_stage_setup_error_reaches_the_user_as_itself(tmp_path, ray_cluster):
    write_webdataset(tmp_path / "data", shards=1, per_shard=2, photos=False)
    cfg = config(tmp_path / "data", tmp_path / "ray", [FaultStageConfig(fail_setup=True)], "ray")
    with pytest.raises(SetupError, match="capmill models pull"):
        run(parse_config(cfg), progress=False)
    # The output is claimed only once a row has passed every stage: nothing was written.
    assert not (tmp_path / "ray").exists()


def test_transient_failures_are_not_committed_and_the_breaker_stops_the_run(tmp_path, ray_cluster):
    pytest.importorskip("aiohttp")
    from capmill.testing.fault_server import Faults, FaultServer

    write_webdataset(tmp_path / "data", shards=3, per_shard=4, photos=False)
    with FaultServer(Faults(server_error=1.0)) as server:
        stages = [{"type": "caption", "formats": ["ssc"], "backend": {
            "type": "openai", "base_url": server.base_url, "model": server.model, "max_retries": 0}}]
        cfg = config(tmp_path / "data", tmp_path / "ray", stages, "ray")
        cfg["reliability"] = {"breaker_after": 0}
        down = run(parse_config(cfg), progress=False)
        assert set(down.deferred_shards) == {"00000", "00001", "00002"} and not down.ok
        assert not list((tmp_path / "ray" / "_stats").glob("*.json"))
        cfg["reliability"] = {"breaker_after": 3}
        stopped = run(parse_config(cfg), progress=False)
        assert stopped.stopped and f"backend openai fault-model at {server.base_url}" in stopped.stopped
        assert not list((tmp_path / "ray" / "_stats").glob("*.json"))
        assert not [p for p in (tmp_path / "ray").rglob("*") if ".tmp-" in p.name]
        server.faults = Faults()
        assert run(parse_config(cfg), progress=False).ok
        assert run(parse_config(config(tmp_path / "data", tmp_path / "local", stages)), progress=False).ok
    assert snapshot(tmp_path / "ray", RUN_JSON) == snapshot(tmp_path / "local", RUN_JSON)


def test_ray_missing_gives_the_install_hint_and_no_fallback(tmp_path, monkeypatch):
    write_webdataset(tmp_path / "data", shards=1, per_shard=2, photos=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    stages = [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}]
    with pytest.raises(SetupError, match=r"pip install 'capmill\[ray\]'"):
        run(parse_config(config(tmp_path / "data", tmp_path / "ray", stages, "ray")), progress=False)
    assert not list((tmp_path / "ray").glob("*.tar"))


def test_tiny_real_models_give_the_same_records_as_local(tmp_path, ray_cluster, tiny_models):
    write_webdataset(tmp_path / "data", shards=2, per_shard=4)
    stages = [
        # Six random tokens are a cut-off sentence to the output guards; this test compares the
        # executors on the model path, so the guards are off.
        {"type": "caption", "formats": ["ssc"], "backend": {"type": "transformers", "model": str(tiny_models / "qwen2_vl"),
                                                             "params": {"max_new_tokens": 6}},
         "guards": {"enabled": False}},
        {"type": "clip_score", "fields": ["alt_text", "ssc"], "backend": {"type": "clip", "model": str(tiny_models / "clip")}},
    ]
    local, on_ray = run_both(tmp_path, stages)
    assert local.ok and on_ray.ok and local.by_status == on_ray.by_status == {"ok": 8}
    ray_files, ray_tars, ray_tables, ray_stats = snapshot(tmp_path / "ray", RUN_JSON)
    local_files, local_tars, local_tables, local_stats = snapshot(tmp_path / "local", RUN_JSON)
    assert (ray_files, ray_stats) == (local_files, local_stats)
    for name, rows in local_tables.items():
        for mine, theirs in zip(ray_tables[name], rows, strict=True):
            assert {k: v for k, v in mine.items() if not k.startswith("score.") and k != "record"} == \
                   {k: v for k, v in theirs.items() if not k.startswith("score.") and k != "record"}
            for key in (k for k in theirs if k.startswith("score.")):
                # Ray workers run torch with one thread per CPU they hold; a different reduction
                # order may move the last bits of a float32 cosine.
                assert mine[key] == pytest.approx(theirs[key], abs=1e-5)



@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU for a GPU actor")
def test_gpu_stage_runs_on_a_gpu_actor(tmp_path, ray_cluster, tiny_models):
    import ray

    assert ray.cluster_resources().get("GPU", 0) >= 1
    write_webdataset(tmp_path / "data", shards=2, per_shard=3)
    stages = [
        {"type": "caption", "formats": ["ssc"], "resources": {"gpus": 1},
         "backend": {"type": "transformers", "model": str(tiny_models / "qwen2_vl"), "device": "cuda",
                     "params": {"max_new_tokens": 6}}},
        FaultStageConfig(report_gpus=True, resources={"gpus": 0.5}),
    ]
    on_ray = run(parse_config(config(tmp_path / "data", tmp_path / "ray", stages, "ray")), progress=False)
    assert on_ray.ok and on_ray.by_status == {"ok": 6}
    rows = [json.loads(r["record"]) for p in (tmp_path / "ray").glob("*.parquet") for r in pq.read_table(p).to_pylist()]
    assert all(r["meta"]["ray_gpu_ids"] for r in rows)  # the actor held a GPU
    assert all(r["captions"]["ssc"]["text"] for r in rows)


@pytest.mark.slow
def test_videos_and_clips_give_the_records_of_a_local_run(tmp_path, ray_cluster):
    """Sampled frames travel in the rows: stages on Ray see the frames a local run sees."""
    from capmill.testing.videos import write_video_webdataset

    write_video_webdataset(tmp_path / "data", shards=2, per_shard=2, hostile=True, scenes=2, scene_seconds=1.5, gop=10)
    stages = [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc", "dsc"]}]
    runs = {}
    for executor in ("local", "ray"):
        cfg = config(tmp_path / "data", tmp_path / executor, stages, executor)
        cfg["input"]["clips"] = {"seconds": 1.0, "min_seconds": 0.2}
        runs[executor] = run(parse_config(cfg), progress=False)
    assert snapshot(tmp_path / "ray", RUN_JSON) == snapshot(tmp_path / "local", RUN_JSON)
    rows = [r for p in sorted((tmp_path / "ray").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    clips = [r for r in rows if r["status"] == "ok"]
    assert len(clips) == 4 * 3 and all(r["key"].split("_clip")[1].isdigit() for r in clips)
    assert all(json.loads(r["record"])["media"]["frame_times"] for r in clips)
    assert {r["status"] for r in rows if r["key"].startswith("bad_")} == {"decode_error"}


def test_a_ray_run_cooperates_with_other_runs(tmp_path, ray_cluster):
    """--cooperate on Ray: the driver claims each shard before handing it to an owner; a shard
    claimed by a live run (here: this process) is left to it."""
    import socket

    from capmill.commit.lock import _boot_id, _pid_start
    from capmill.run import Share

    write_webdataset(tmp_path / "data", shards=3, per_shard=3, photos=False)
    stages = [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}]
    assert run(parse_config(config(tmp_path / "data", tmp_path / "local", stages)), progress=False).ok
    claims = tmp_path / "ray" / "_claims"
    claims.mkdir(parents=True)
    (claims / "00001.json").write_text(json.dumps({
        "holder": "other", "host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
        "pid_start": _pid_start(os.getpid()), "mode": "claim", "heartbeat_s": 10}))
    summary = run(parse_config(config(tmp_path / "data", tmp_path / "ray", stages, "ray")), progress=False,
                  share=Share(cooperate=True))
    assert summary.shards_done == 2 and summary.shards_elsewhere == 1
    assert sorted(p.stem for p in (tmp_path / "ray" / "_stats").glob("*.json")) == ["00000", "00002"]
    for name in ("00000.tar", "00002.tar"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    assert [p.name for p in claims.iterdir()] == ["00001.json"]  # its own claims given back


@pytest.mark.slow
def test_audio_and_audio_clips_give_the_records_of_a_local_run(tmp_path, ray_cluster):
    """Decoded waveforms reach a pooled stage's actor: a scorer on Ray embeds the audio a local
    run embeds (and the waveform it did not replace is not sent back)."""
    from capmill.testing.audio import write_audio_webdataset

    write_audio_webdataset(tmp_path / "data", shards=2, per_shard=2, hostile=True, seconds=3.0)
    stages = [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"], "media": "audio"},
              {"type": "clip_score", "name": "clap", "backend": {"type": "fake"}, "resources": {"concurrency": 1}},
              {"type": "clip_score", "name": "again", "backend": {"type": "fake"}}]
    for executor in ("local", "ray"):
        cfg = config(tmp_path / "data", tmp_path / executor, stages, executor)
        cfg["input"]["clips"] = {"seconds": 1.5, "min_seconds": 0.5}
        # 4 recordings of 3 s → 2 clips each; the hostile FLAC claiming 5 hours is measured (half
        # a second: one clip); the other hostile files keep their rows with the reason.
        assert run(parse_config(cfg), progress=False).by_status.get("ok") == 4 * 2 + 1
    assert snapshot(tmp_path / "ray", RUN_JSON) == snapshot(tmp_path / "local", RUN_JSON)
    rows = [json.loads(r["record"]) for p in sorted((tmp_path / "ray").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["media"]["kind"] == "audio" and "clap:ssc" in r["scores"] for r in ok)
    # The stage after the pooled one still had the waveform (restored in the owner) and scored alike.
    assert all(r["scores"]["again:ssc"] == r["scores"]["clap:ssc"] for r in ok)
    bad = {r["key"]: r["status"] for r in rows if r["key"].startswith("bad_")}
    assert bad.pop("bad_hours_claimed_clip0000") == "ok" and set(bad.values()) == {"decode_error"}
