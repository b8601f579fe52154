"""The data-path pipeline under the Ray executor against the local executor, on one machine.

    python benchmarks/ray_vs_local.py [--samples 2000] [--shards 8] [--json FILE]

Pipeline (the one of benchmarks/datapath.py): read → decode + hygiene + resize to 384 px →
caption (fake backend, zero delay) → write webdataset + parquet. For W = 1 and 2 CPU workers:

- local: the process pinned to W cores, W decode threads, W shards in flight;
- ray:   the process pinned to W cores before a private cluster starts (its processes inherit
         the pinning), W logical CPUs and W shard owners (each reads, decodes, captions, writes
         and commits its shard; the caption stage runs inside the owners).

Cluster start-up is timed apart from the run; the run time includes starting the owner actors
because a user pays it on every run. Local and Ray runs alternate, best of two each. Outputs of
the two executors are checked to be the same files before any figure is printed.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from datapath import capmill_config, make_shards, run_capmill  # noqa: E402


def pin(cpus: set[int]) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)


def ray_config(data: str, out: str, owners: int, batch_size: int = 16) -> dict:
    config = capmill_config(data, out, workers=1, batch_size=batch_size)
    config["executor"] = {"type": "ray", "batch_size": batch_size, "shards_in_flight": owners}
    return config


def same_outputs(a: str, b: str) -> bool:
    names = sorted(n for n in os.listdir(a) if n.endswith((".tar", ".parquet")))
    if names != sorted(n for n in os.listdir(b) if n.endswith((".tar", ".parquet"))):
        return False
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return not mismatch and not errors


def measure(data: str, work: str, workers: int, cpus: list[int]) -> dict:
    from capmill.executors.ray import start_local_cluster, stop_local_cluster

    pin(set(cpus[:workers]))
    local_out, ray_out = os.path.join(work, f"local{workers}"), os.path.join(work, f"ray{workers}")
    local_config = capmill_config(data, local_out, workers=workers)
    local_config["executor"]["shards_in_flight"] = workers
    start = time.perf_counter()
    start_local_cluster(num_cpus=workers, object_store_memory_gb=1.0, log_to_driver=False)
    cluster_seconds = time.perf_counter() - start
    local_runs, ray_runs = [], []
    try:
        run_capmill(local_config)  # warm-up: imports and first-use caches of this process
        for _ in range(2):  # alternate, so that load from elsewhere hits both alike
            local_runs.append(run_capmill(local_config))
            ray_runs.append(run_capmill(ray_config(data, ray_out, workers)))
    finally:
        stop_local_cluster()
    (local_seconds, n), (ray_seconds, n_ray) = min(local_runs), min(ray_runs)
    assert n == n_ray and same_outputs(local_out, ray_out), "ray and local outputs differ"
    return {"workers": workers, "samples": n, "local_samples_per_s": n / local_seconds,
            "ray_samples_per_s": n / ray_seconds, "ray_over_local_time": ray_seconds / local_seconds,
            "ray_cluster_start_seconds": cluster_seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    work = tempfile.mkdtemp(prefix="capmill-ray-bench-")
    try:
        data = os.path.join(work, "data")
        make_shards(data, args.samples, args.shards)
        results = [measure(data, work, w, cpus) for w in (1, 2) if w <= len(cpus)]
        for r in results:
            print(f"{r['workers']} CPU worker(s): local {r['local_samples_per_s']:7.1f} samples/s, "
                  f"ray {r['ray_samples_per_s']:7.1f} samples/s (ray takes {r['ray_over_local_time']:.2f}x "
                  f"the local time; cluster start {r['ray_cluster_start_seconds']:.1f}s not included)")
        if len(results) == 2:
            print(f"scaling 1 → 2 workers: local {results[1]['local_samples_per_s'] / results[0]['local_samples_per_s']:.2f}x, "
                  f"ray {results[1]['ray_samples_per_s'] / results[0]['ray_samples_per_s']:.2f}x")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
