"""Nothing lost, nothing wrong committed: transient failures, the budget, the circuit breaker,
--retry-errors, --limit, degenerate results, claiming only after setup, unwritable outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest
import yaml

from capmill.cli.main import main
from capmill.config import parse_config
from capmill.outputdir import config_hash
from capmill.run import run
from capmill.testing import write_webdataset
from capmill.testing.fault_server import Faults, FaultServer
from tests.conftest import make_config, snapshot

pytest.importorskip("aiohttp")


@pytest.fixture
def server():
    with FaultServer(seed=5) as s:
        yield s


def openai_stage(server, **backend):
    return {"type": "caption", "formats": ["ssc"], "backend": {
        "type": "openai", "base_url": server.base_url, "model": server.model, "max_retries": 0,
        "backoff_s": 0.01, "backoff_max_s": 0.02, "attempt_timeout_s": 5.0, **backend}}


def statuses(out):
    return [r["status"] for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


# ---- transient failures: budget and circuit breaker -----------------------------------------


def test_server_down_is_never_committed_and_the_breaker_names_the_backend(tmp_path, server):
    write_webdataset(tmp_path / "data", shards=3, per_shard=6, photos=False)
    cfg = make_config(tmp_path / "data", tmp_path / "out", stages=[openai_stage(server)],
                      reliability={"breaker_after": 4})
    cfg["executor"]["shards_in_flight"] = 1
    server.faults = Faults(server_error=1.0)  # the server answers 500 to everything
    summary = run(parse_config(cfg), progress=False)
    assert not summary.ok and summary.stopped
    assert "4 consecutive samples failed transiently in stage caption" in summary.stopped
    assert f"backend openai fault-model at {server.base_url}" in summary.stopped
    assert "STOPPED" in summary.render() and "LEFT FOR RERUN shard 00000" in summary.render()
    assert not list((tmp_path / "out" / "_stats").glob("*.json"))  # nothing committed
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp-" in p.name]
    assert len(server.events) < 18  # it stopped instead of trying every sample
    # The server is back: the rerun completes every sample.
    server.faults = Faults()
    again = run(parse_config(cfg), progress=False)
    assert again.ok and again.shards_done == 3 and statuses(tmp_path / "out") == ["ok"] * 18


def test_transient_failures_beyond_the_budget_leave_the_shard_for_the_rerun(tmp_path, server):
    write_webdataset(tmp_path / "data", shards=2, per_shard=10, photos=False)
    cfg = make_config(tmp_path / "data", tmp_path / "out", stages=[openai_stage(server)],
                      reliability={"breaker_after": 0, "transient_budget": 0.1})
    server.faults = Faults(server_error=0.3)
    summary = run(parse_config(cfg), progress=False)
    committed = {p.stem for p in (tmp_path / "out" / "_stats").glob("*.json")}
    assert summary.deferred_shards, "30% of requests failing once leaves more than 1 in 10 failed"
    assert not set(summary.deferred_shards) & committed
    for reason in summary.deferred_shards.values():
        assert "failed transiently (budget 1)" in reason
    # What was committed holds at most the budget, and says so in the exit code.
    for name in committed:
        stats = json.loads((tmp_path / "out" / "_stats" / f"{name}.json").read_text())
        assert stats["by_status"].get("transient_error", 0) <= 1
    assert not summary.ok


@pytest.mark.parametrize("layout", [
    {"writers": ["webdataset", "parquet"], "rejects": True},
    {"writers": ["webdataset", "parquet", "sidecar"], "reencode": "png"},
])
def test_retry_errors_rewrites_committed_shards_to_the_uninterrupted_output(tmp_path, server, layout):
    write_webdataset(tmp_path / "data", shards=2, per_shard=8, photos=False)
    stages = [
        openai_stage(server),
        {"type": "clip_score", "backend": {"type": "fake"}, "fields": ["alt_text", "ssc"]},
        {"type": "filter", "rules": [{"score": "clip:alt_text", "min": 0.0}]},  # drops about half
    ]

    def config(out):
        cfg = make_config(tmp_path / "data", out, stages=stages,
                          reliability={"breaker_after": 0, "transient_budget": 1.0})
        cfg["output"].update(layout)
        return parse_config(cfg)

    assert run(config(tmp_path / "ref"), progress=False).ok  # no fault: the reference
    server.faults = Faults(server_error=0.4)
    first = run(config(tmp_path / "out"), progress=False)
    assert first.shards_done == 2 and first.retryable and not first.ok
    assert "transient_error" in statuses(tmp_path / "out")
    server.faults = Faults()
    server.reset()
    retried = run(config(tmp_path / "out"), retry_errors=True, progress=False)
    assert retried.ok, retried.render()
    # Only the retryable samples went to the backend again.
    assert len(server.events) == sum(first.retryable.values())
    assert snapshot(tmp_path / "out", frozenset({"_run.json"})) == snapshot(tmp_path / "ref", frozenset({"_run.json"}))
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp-" in p.name]
    # A plain rerun over retryable rows says what to do.
    server.faults = Faults(server_error=1.0)
    run(config(tmp_path / "out2"), progress=False)
    again = run(config(tmp_path / "out2"), progress=False)
    assert again.shards_done == 0 and not again.ok and "--retry-errors" in again.render()


# ---- --limit ---------------------------------------------------------------------------------


def fake_config(tmp_path, out="out"):
    return make_config(tmp_path / "data", tmp_path / out, stages=[
        {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}])


def test_limit_is_a_trial_that_the_full_run_extends(tmp_path):
    write_webdataset(tmp_path / "data", shards=3, per_shard=4, photos=False)
    cfg = parse_config(fake_config(tmp_path))
    trial = run(cfg, limit=6, progress=False)
    assert trial.ok and trial.samples == 6
    stats = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out" / "_stats").glob("*.json")}
    assert stats["00001"]["partial"] and stats["00001"]["samples"] == 2 and "partial" not in stats["00000"]
    # The same limit again: already there.
    assert run(cfg, limit=6, progress=False).shards_done == 0
    # A larger limit redoes the cut shard (now whole) and cuts the next, not the complete one.
    more = run(cfg, limit=9, progress=False)
    assert more.shards_done == 2 and more.shards_skipped == 1 and more.samples == 5
    # The full run, no --force: extends to the uninterrupted output.
    full = run(cfg, progress=False)
    assert full.ok and full.shards_skipped == 2 and full.shards_done == 1 and full.samples == 4
    assert run(parse_config(fake_config(tmp_path, "ref")), progress=False).ok
    assert snapshot(tmp_path / "out", frozenset({"_run.json"})) == snapshot(tmp_path / "ref", frozenset({"_run.json"}))


def test_outputs_made_before_limit_left_the_hash_still_resume(tmp_path):
    cfg = parse_config(fake_config(tmp_path))
    old = cfg.model_dump(mode="json")
    old.pop("executor")
    old.pop("reliability")
    old.pop("tracking")
    old.pop("audio")  # written before the audio section existed
    assert config_hash(cfg.hashed_content()) == config_hash({**old, "limit": None})


# ---- degenerate results ----------------------------------------------------------------------


def test_all_fallbacks_or_all_drops_fail_the_run_with_the_reason(tmp_path, capsys):
    write_webdataset(tmp_path / "data", shards=2, per_shard=4, photos=False)
    # (A fuse reading a caption no stage writes, or a filter on a score nothing computes, is
    # stopped before the run by the chain check; these pipelines are valid and still degenerate.)
    refusals = ["I'm sorry, but I can't help with that."] * 16  # every fusion, and every retry
    fuse_refused = make_config(tmp_path / "data", tmp_path / "fused", stages=[
        {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]},
        {"type": "fuse", "backend": {"type": "fake", "responses": refusals}, "caption": "ssc"},
    ], executor={"type": "local", "batch_size": 8})
    path = tmp_path / "fuse.yaml"
    path.write_text(yaml.safe_dump(fuse_refused))
    assert main(["run", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "DEGENERATE shard 00000: caption 'capsfusion': 4 of 4 fell back (refusal 4)" in err
    filter_everything = make_config(tmp_path / "data", tmp_path / "filtered", stages=[
        {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]},
        {"type": "filter", "rules": [{"length": "ssc", "min": 10000}]},  # no caption is that long
    ])
    summary = run(parse_config(filter_everything), progress=False)
    assert not summary.ok and set(summary.degenerate) == {"00000", "00001"}
    assert "stage 'filter' dropped 4 of the 4 samples it saw" in summary.degenerate["00000"][0]
    # The rerun of a degenerate output still fails (exit 0 must mean the data is right), unless
    # the bound says that dropping whole shards is meant (it is not part of the config hash).
    again = run(parse_config(filter_everything), progress=False)
    assert again.shards_skipped == 2 and not again.ok
    filter_everything["reliability"] = {"fail_at_drop_share": 1.5}
    assert run(parse_config(filter_everything), progress=False).ok


def test_a_partial_drop_below_the_bound_passes(tmp_path):
    write_webdataset(tmp_path / "data", shards=1, per_shard=8, photos=False)
    cfg = make_config(tmp_path / "data", tmp_path / "out", stages=[
        {"type": "clip_score", "backend": {"type": "fake"}, "fields": ["alt_text"]},
        {"type": "filter", "rules": [{"score": "clip:alt_text", "min": 0.0}]},
    ])
    summary = run(parse_config(cfg), progress=False)
    assert 0 < summary.drops["filter: clip:alt_text < 0"] < 8 and summary.ok
    stats = json.loads((tmp_path / "out" / "_stats" / "00000.json").read_text())
    assert stats["stages"]["filter"] == {"samples": 8, "dropped": summary.drops["filter: clip:alt_text < 0"]}
    cfg["output"]["path"] = str(tmp_path / "strict")
    cfg["reliability"] = {"fail_at_drop_share": 0.1}
    strict = run(parse_config(cfg), progress=False)
    assert not strict.ok and "stage 'filter' dropped" in strict.degenerate["00000"][0]


# ---- claiming the output ---------------------------------------------------------------------


def test_a_backend_that_fails_at_setup_leaves_the_output_as_it_was(tmp_path, server, capsys):
    write_webdataset(tmp_path / "data", shards=1, per_shard=2, photos=False)
    down = {"type": "caption", "formats": ["ssc"], "backend": {
        "type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "probe_timeout_s": 2}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(make_config(tmp_path / "data", tmp_path / "out", stages=[down])))
    assert main(["run", str(path), "--no-progress"]) == 1
    assert "no OpenAI-compatible server answers" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # An existing output of another config: the crash leaves it, and the corrected config
    # (here: the first one again) resumes without --force.
    path.write_text(yaml.safe_dump(fake_config(tmp_path)))
    assert main(["run", str(path), "--no-progress"]) == 0
    before = sorted(p.name for p in (tmp_path / "out").rglob("*"))
    run_json = (tmp_path / "out" / "_run.json").read_text()
    broken = make_config(tmp_path / "data", tmp_path / "out", stages=[down])
    path.write_text(yaml.safe_dump(broken))
    assert main(["run", str(path), "--force", "--no-progress"]) == 1
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == before
    assert (tmp_path / "out" / "_run.json").read_text() == run_json


def test_a_read_only_output_is_one_line_and_exit_2(tmp_path):
    write_webdataset(tmp_path / "data", shards=1, per_shard=2, photos=False)
    out = tmp_path / "out"
    out.mkdir()
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(fake_config(tmp_path)))
    command = [sys.executable, "-m", "capmill.cli.main", "run", str(path), "--no-progress"]
    if os.geteuid() == 0:
        # root writes through permission bits: a read-only bind mount in a private mount namespace.
        probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
        if probe.returncode != 0:
            pytest.skip(f"running as root and cannot make a read-only mount here: {probe.stderr.decode()[:200]}")
        script = f"mount --bind -o ro {out} {out} && exec \"$@\""
        command = ["unshare", "-rm", "sh", "-c", script, "sh", *command]
    else:
        out.chmod(0o555)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write to output directory" in lines[0] and "Traceback" not in proc.stderr
    assert "read-only" in lines[0].lower() or "not writable" in lines[0]


def test_temporaries_of_a_disk_full_failure_are_removed_on_the_failure_path(tmp_path):
    """A file-size limit makes every write past it fail (EFBIG), as a full disk fails them."""
    write_webdataset(tmp_path / "data", shards=2, per_shard=6)  # photos: a tar of a few hundred KB
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(fake_config(tmp_path)))
    limit = 64 * 1024
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        from capmill.cli.main import main
        sys.exit(main(["run", {str(path)!r}, "--no-progress"]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "FAILED shard 00000" in proc.stderr and "File too large" in proc.stderr
    out = tmp_path / "out"
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name], sorted(p.name for p in out.rglob("*"))
    assert not (out / "_lock.json").exists()


# ---- --dry-run ------------------------------------------------------------------------------


def test_dry_run_checks_models_output_and_lists_shards_writing_nothing(tmp_path, capsys):
    write_webdataset(tmp_path / "data", shards=3, per_shard=2, photos=False)
    cfg = make_config(tmp_path / "data", tmp_path / "out", stages=[
        {"type": "caption", "formats": ["ssc"], "backend": {"type": "transformers", "model": str(tmp_path / "no-model")}}])
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--dry-run"]) == 1  # a model not available offline
    out = capsys.readouterr().out
    assert "NOT available offline" in out and "would process 3 shard(s): 00000, 00001, 00002" in out
    assert f"{tmp_path / 'out'} would be created" in out and not (tmp_path / "out").exists()
    path.write_text(yaml.safe_dump(fake_config(tmp_path)))
    assert main(["run", str(path), "--limit", "3", "--no-progress"]) == 0
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "resumes: 2 shard(s) committed" in out and "would process 2 shard(s): 00001, 00002" in out
    # Another config into it would be refused, and a live lock too.
    assert main(["run", str(path), "--dry-run", "--set", "stages.0.formats=[dsc]"]) == 2
    assert "REFUSED" in capsys.readouterr().out
    (tmp_path / "out" / "_lock.json").write_text(json.dumps(
        {"holder": "x", "host": "node-3", "pid": 1, "heartbeat_s": 10, "started": "now", "command": "capmill run a.yaml"}))
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "in use by another run: pid 1 on host node-3" in capsys.readouterr().out
