"""Several runs, one output, without Ray: `--cooperate` claims, the static split, the fit step
computed once, and the exclusive lock and cooperating runs refusing each other."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Literal

import pytest
import yaml

from capmill.commit.lock import _boot_id, _pid_start
from capmill.components import StageConfig
from capmill.config import parse_config
from capmill.errors import ConfigError, OutputLockedError
from capmill.keys import StageIO
from capmill.run import Share, run
from capmill.sample import Sample
from capmill.stages.base import Stage
from capmill.testing import write_webdataset
from tests.conftest import make_config, snapshot

pytestmark = pytest.mark.timeout(300)
RUN_JSON = frozenset({"_run.json"})


class SlowFitConfig(StageConfig):
    """Test double: a stage whose fit takes a while and counts how often it ran."""

    type: Literal["slow_fit"] = "slow_fit"

    def build(self) -> SlowFitStage:
        return SlowFitStage(self)

    def io(self, available) -> StageIO:
        return StageIO()


class SlowFitStage(Stage):
    fitted = 0

    @property
    def needs_fit(self) -> bool:
        return True

    def fit(self, ctx, samples) -> dict:
        SlowFitStage.fitted += 1
        n = sum(1 for _ in samples)
        time.sleep(1.0)
        return {"seen": n}

    def process_one(self, sample: Sample) -> Sample:
        sample.meta["fit_saw"] = self.fit_state["seen"]
        return sample


def lease_record(pid: int, **extra) -> str:
    return json.dumps({"holder": "planted", "host": socket.gethostname(), "boot_id": _boot_id(), "pid": pid,
                       "pid_start": _pid_start(pid), "started": "2030-01-01T00:00:00+00:00", "heartbeat_s": 10,
                       "command": "capmill run other.yaml", **extra})


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def cfg(tmp_path, out, delay=0.0, stages=None):
    return make_config(tmp_path / "data", tmp_path / out, stages=stages or [
        {"type": "caption", "backend": {"type": "fake", "delay_s": delay}, "formats": ["ssc"]}])


def leftovers(out):
    return [p for p in out.rglob("*") if p.is_file() and (".tmp-" in p.name or p.parent.name in ("_claims", "_cooperators"))]


@pytest.mark.slow
def test_cooperating_processes_process_each_shard_once_and_match_a_lone_run(tmp_path):
    write_webdataset(tmp_path / "data", shards=8, per_shard=4, photos=False)
    assert run(parse_config(cfg(tmp_path, "ref")), progress=False).ok
    config = cfg(tmp_path, "out", delay=0.05)
    config["executor"].update(batch_size=2, shards_in_flight=1)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    procs = [subprocess.Popen([sys.executable, "-m", "capmill.cli.main", "run", str(path), "--cooperate",
                               "--no-progress", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    summaries = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        summaries.append(json.loads(out))
    # Every shard committed by exactly one of them.
    assert sum(s["shards"]["done"] for s in summaries) == 8
    assert sum(1 for s in summaries if s["shards"]["done"]) >= 2  # they did share the work
    assert snapshot(tmp_path / "out", RUN_JSON) == snapshot(tmp_path / "ref", RUN_JSON)
    assert not leftovers(tmp_path / "out")
    assert not (tmp_path / "out" / "_lock.json").exists()


@pytest.mark.slow
def test_runs_in_threads_share_shards_and_fit_once(tmp_path):
    """Cooperating runs in one process (same pid: each sees the others alive) claim disjoint
    shards, and the fit step runs once: the others wait for it and read it."""
    write_webdataset(tmp_path / "data", shards=6, per_shard=3, photos=False)
    stages = lambda delay: [SlowFitConfig(), {"type": "caption", "backend": {"type": "fake", "delay_s": delay},  # noqa: E731
                                              "formats": ["ssc"]}]
    SlowFitStage.fitted = 0
    assert run(parse_config(cfg(tmp_path, "ref", stages=stages(0.0))), progress=False).ok
    assert SlowFitStage.fitted == 1
    SlowFitStage.fitted = 0
    config = parse_config(cfg(tmp_path, "out", stages=stages(0.05)))
    results: list = []
    errors: list = []

    def one():
        try:
            results.append(run(config, progress=False, share=Share(cooperate=True)))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors
    assert SlowFitStage.fitted == 1  # computed once, by the first cooperator
    assert all(r.ok for r in results), [r.render() for r in results]
    assert sum(r.shards_done for r in results) == 6
    assert snapshot(tmp_path / "out", RUN_JSON) == snapshot(tmp_path / "ref", RUN_JSON)
    assert not leftovers(tmp_path / "out")


def test_static_split_covers_every_shard_once(tmp_path):
    write_webdataset(tmp_path / "data", shards=5, per_shard=2, photos=False)
    assert run(parse_config(cfg(tmp_path, "ref")), progress=False).ok
    config = parse_config(cfg(tmp_path, "out"))
    first = run(config, progress=False, share=Share(shard_index=0, num_shards=2))
    assert first.ok and first.shards_done == 3 and first.shards_total == 3
    assert sorted(p.stem for p in (tmp_path / "out" / "_stats").glob("*.json")) == ["00000", "00002", "00004"]
    second = run(config, progress=False, share=Share(shard_index=1, num_shards=2))
    assert second.ok and second.shards_done == 2
    assert snapshot(tmp_path / "out", RUN_JSON) == snapshot(tmp_path / "ref", RUN_JSON)
    # A lone run afterwards finds everything done.
    assert run(config, progress=False).shards_skipped == 5
    with pytest.raises(ConfigError, match="0..1"):
        run(config, progress=False, share=Share(shard_index=2, num_shards=2))
    with pytest.raises(ConfigError, match="--force"):
        run(config, progress=False, force=True, share=Share(cooperate=True))


def test_a_dead_runs_claim_is_taken_over_and_a_live_one_skipped(tmp_path):
    write_webdataset(tmp_path / "data", shards=3, per_shard=2, photos=False)
    assert run(parse_config(cfg(tmp_path, "ref")), progress=False).ok
    out = tmp_path / "out"
    (out / "_claims").mkdir(parents=True)
    (out / "_claims" / "00000.json").write_text(lease_record(dead_pid(), mode="claim"))
    (out / ".00000.tar.tmp-deadbeef").write_bytes(b"half a tar")  # what the dead run left
    (out / ".00001.tar.tmp-livecafe").write_bytes(b"being written")  # the live run's
    (out / "_claims" / "00001.json").write_text(lease_record(os.getpid(), mode="claim"))  # alive: this process
    summary = run(parse_config(cfg(tmp_path, "out")), progress=False, share=Share(cooperate=True))
    assert summary.shards_done == 2 and summary.shards_elsewhere == 1
    assert "still in progress in cooperating runs: 00001" in summary.render()
    assert not (out / ".00000.tar.tmp-deadbeef").exists()  # the dead run's leftovers of its shard
    assert (out / ".00001.tar.tmp-livecafe").exists()  # a live run's temporaries are not touched
    assert sorted(p.stem for p in (out / "_stats").glob("*.json")) == ["00000", "00002"]
    assert (out / "_claims" / "00001.json").exists()
    ref_files, ref_tars, _, _ = snapshot(tmp_path / "ref", RUN_JSON)
    assert (out / "00000.tar").read_bytes() == ref_tars["00000.tar"]


def test_a_lone_run_and_cooperating_runs_refuse_each_other(tmp_path):
    write_webdataset(tmp_path / "data", shards=2, per_shard=2, photos=False)
    out = tmp_path / "out"
    config = parse_config(cfg(tmp_path, "out"))
    assert run(config, progress=False).ok
    # A cooperating run (alive: this process) holds the output: a lone run refuses, before
    # loading anything, and at its lock too.
    (out / "_cooperators").mkdir()
    member = out / "_cooperators" / "x.json"
    member.write_text(lease_record(os.getpid(), mode="cooperate"))
    with pytest.raises(OutputLockedError, match=r"1 cooperating run\(s\).*--cooperate"):
        run(config, progress=False)
    from capmill.commit.lock import RunLock

    with pytest.raises(OutputLockedError, match="cooperating"):
        RunLock(str(out)).acquire()
    assert not (out / "_lock.json").exists()  # given back
    # Another cooperating run is welcome.
    assert run(config, progress=False, share=Share(cooperate=True)).ok
    member.unlink()
    # A lone run holds it: a cooperating run refuses.
    (out / "_lock.json").write_text(lease_record(os.getpid(), mode="exclusive"))
    with pytest.raises(OutputLockedError, match="without --cooperate"):
        run(config, progress=False, share=Share(cooperate=True))
    (out / "_lock.json").unlink()
    # A dead cooperator's member lease does not count.
    member.write_text(lease_record(dead_pid(), mode="cooperate"))
    assert run(config, progress=False).ok
    assert not member.exists()


def test_the_cli_checks_the_split_and_lists_what_a_part_would_do(tmp_path, capsys):
    from capmill.cli.main import main

    write_webdataset(tmp_path / "data", shards=4, per_shard=1, photos=False)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg(tmp_path, "out")))
    assert main(["run", str(path), "--shard-index", "1"]) == 2
    assert "--shard-index and --num-shards go together" in capsys.readouterr().err
    assert main(["run", str(path), "--dry-run", "--json", "--shard-index", "1", "--num-shards", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [t["shard"] for t in report["would_process"]] == ["00001", "00003"]
