import os

import pytest

# Keep every test offline: hub clients must read local folders only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture
def wds(tmp_path):
    """Three small webdataset shards of real and generated photos (8 samples each)."""
    from capmill.testing import write_webdataset

    return write_webdataset(tmp_path / "data", shards=3, per_shard=8)


def make_config(data_dir, out_dir, stages=None, **sections):
    """A run config dict over the tar shards in `data_dir`."""
    config = {
        "input": {"type": "webdataset", "path": f"{data_dir}/*.tar"},
        "output": {"path": str(out_dir), "writers": ["webdataset", "parquet"]},
        "executor": {"type": "local", "batch_size": 4},
        "stages": stages if stages is not None else [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc", "dsc"]}],
    }
    config.update(sections)
    return config


def kill_while_working(config_path, out_dir, rng, rounds: int, within: tuple[float, float] = (0.0, 1.5)) -> int:
    """Start `capmill run CONFIG` `rounds` times; each time wait until that process holds the
    output's lock (its start-up is over and it is working), then SIGKILL it at a random moment
    `within` seconds later if it is still running. Returns how many runs were killed. Waiting for
    the lock keeps the kills inside the work however fast the machine starts Python."""
    import json
    import signal
    import subprocess
    import sys
    import time

    lock = os.path.join(os.fspath(out_dir), "_lock.json")
    kills = 0
    for _ in range(rounds):
        proc = subprocess.Popen([sys.executable, "-m", "capmill.cli.main", "run", str(config_path), "--no-progress"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with open(lock, encoding="utf-8") as f:
                    if json.load(f).get("pid") == proc.pid:
                        break
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
        time.sleep(rng.uniform(*within))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    return kills


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def snapshot(out, ignore: frozenset[str] = frozenset()):
    """Everything a consumer of run output `out` reads: file names, tar bytes, parquet rows
    (rejects too), stats without timings. Files named in `ignore` are left out."""
    import json

    import pyarrow.parquet as pq

    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name not in ignore)
    tars = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    tables = {p.relative_to(out).as_posix(): pq.read_table(p).to_pylist() for p in out.rglob("*.parquet")}
    stats = {}
    for p in (out / "_stats").glob("*.json"):
        s = json.loads(p.read_text())
        s.pop("seconds")
        stats[p.name] = s
    return files, tars, tables, stats


@pytest.fixture(scope="session")
def tiny_models():
    """Folder holding the tiny random models of every family (`tiny_models / "qwen2_vl"` …), built
    once and cached under .cache/tiny_models keyed by the build version."""
    from pathlib import Path

    from capmill.testing.tiny_models import cached_tiny_models

    root = os.environ.get("CAPMILL_TINY_MODELS_CACHE") or Path(__file__).resolve().parent.parent / ".cache" / "tiny_models"
    return cached_tiny_models(root)
