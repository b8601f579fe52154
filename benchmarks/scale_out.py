"""Scale-out figures, each a ratio measured in the same run.

    python benchmarks/scale_out.py [--samples 2000] [--shards 8] [--json FILE]

Pipeline (the one of benchmarks/datapath.py): read → decode + hygiene + resize to 384 px →
caption (fake backend, zero delay) → write webdataset + parquet.

1. Driver CPU per 1,000 samples (CPU seconds of the driver process, all its threads, during the
   run): the earlier Ray executor, whose driver wrote every shard (benchmarks/baseline/), against
   the shard-owner executor with 1, 2 and 4 owners. One private cluster serves every Ray run, its
   start not timed.
2. Ray vs local on this machine: the same two-worker pipeline, `local` (2 decode threads, 2
   shards in flight) against `ray` (2 shard owners), wall time including Ray's actor start;
   alternated, best of each.
3. Time to first committed shard on Ray as a fraction of the run (from the run's start to the
   first commit record's modification time, over the run's wall time).
4. N = 2 cooperating local processes (`capmill run --cooperate`, one decode thread each) against
   one process with 2 decode threads (both with 2 shards in flight), both as fresh `capmill run`
   processes (both pay interpreter start); alternated, best of two each.

Every pair of outputs is checked to be the same files before any figure is printed.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "baseline"))

from datapath import capmill_config, make_shards  # noqa: E402


def same_outputs(a: str, b: str) -> bool:
    names = sorted(n for n in os.listdir(a) if n.endswith((".tar", ".parquet")))
    if not names or names != sorted(n for n in os.listdir(b) if n.endswith((".tar", ".parquet"))):
        return False
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return not mismatch and not errors


def ray_config(data: str, out: str, owners: int) -> dict:
    config = capmill_config(data, out, workers=1)
    config["executor"] = {"type": "ray", "batch_size": 16, "shards_in_flight": owners}
    return config


def timed_run(config: dict, baseline: bool = False) -> dict:
    """Run in this process; wall time, driver CPU time, samples, first commit's offset."""
    from capmill.config import parse_config
    from capmill.executors import ray as ray_executor
    from capmill.run import run

    shutil.rmtree(config["output"]["path"], ignore_errors=True)
    saved = ray_executor.RayExecutorConfig.build
    if baseline:
        import ray_driver_writes

        ray_executor.RayExecutorConfig.build = lambda self: ray_driver_writes.RayExecutor(
            ray_driver_writes.RayExecutorConfig(batch_size=self.batch_size))
    try:
        wall0, cpu0 = time.time(), time.process_time()
        summary = run(parse_config(config), progress=False)
        wall, cpu = time.time() - wall0, time.process_time() - cpu0
    finally:
        ray_executor.RayExecutorConfig.build = saved
    assert summary.ok, summary.render()
    stats = os.path.join(config["output"]["path"], "_stats")
    first = min(os.path.getmtime(os.path.join(stats, n)) for n in os.listdir(stats))
    return {"wall_s": wall, "driver_cpu_s": cpu, "samples": summary.samples,
            "first_commit_fraction": (first - wall0) / wall,
            "driver_cpu_per_1000": 1000 * cpu / summary.samples}


def ray_figures(data: str, work: str, shards: int) -> dict:
    import ray

    from capmill.executors.ray import start_local_cluster, stop_local_cluster

    # Workers of the cluster import the baseline's row module by name.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.join(HERE, "baseline"), HERE,
                                                           os.environ.get("PYTHONPATH")) if p)
    start_local_cluster(num_cpus=4, object_store_memory_gb=1.0, log_to_driver=False)
    try:
        assert ray.is_initialized()
        local_out = os.path.join(work, "local2")
        out = {"local": None, "before": None, "owners": {}}
        # Warm-up: imports and first-use caches of this process and the workers.
        timed_run(ray_config(data, os.path.join(work, "warm"), 2))
        out["before"] = timed_run(ray_config(data, os.path.join(work, "before"), 2), baseline=True)
        for owners in (1, 2, 4):
            out["owners"][owners] = timed_run(ray_config(data, os.path.join(work, f"after{owners}"), owners))
        local = capmill_config(data, local_out, workers=2)
        # Ray against local: alternate, best of each (the machine is shared with other work).
        local_runs, ray_runs = [], [out["owners"][2]]
        for _ in range(2):
            local_runs.append(timed_run(local))
            ray_runs.append(timed_run(ray_config(data, os.path.join(work, "after2"), 2)))
        out["local"] = min(local_runs, key=lambda r: r["wall_s"])
        out["ray_best_2_owners"] = min(ray_runs, key=lambda r: r["wall_s"])
        for name in ["before", *[f"after{o}" for o in (1, 2, 4)]]:
            assert same_outputs(local_out, os.path.join(work, name)), f"{name} differs from the local output"
        out["first_commit_target"] = 1.5 / shards
        return out
    finally:
        stop_local_cluster()


def cli_run(config: dict, path: str, extra: list[str], copies: int) -> tuple[float, float, list[dict]]:
    """Wall time, CPU seconds of the processes, and their JSON summaries."""
    import resource

    with open(path, "w") as f:
        json.dump(config, f)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    procs = [subprocess.Popen([sys.executable, "-m", "capmill.cli.main", "run", path, "--no-progress", "--json", *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(copies)]
    summaries = []
    for proc in procs:
        stdout, stderr = proc.communicate()
        assert proc.returncode == 0, stderr[-2000:]
        summaries.append(json.loads(stdout))
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, summaries


def cooperating(data: str, work: str, rounds: int = 3) -> dict:
    one_out, coop_out = os.path.join(work, "one"), os.path.join(work, "coop")
    one = capmill_config(data, one_out, workers=2)
    coop = capmill_config(data, coop_out, workers=1)  # the same executor settings, one decode thread
    results: dict[str, list] = {"one": [], "coop": []}
    for _ in range(rounds):  # alternate, so that load from elsewhere hits both alike
        shutil.rmtree(one_out, ignore_errors=True)
        wall, cpu, summaries = cli_run(one, os.path.join(work, "one.json"), [], 1)
        results["one"].append((wall, cpu, summaries[0]["samples"]))
        shutil.rmtree(coop_out, ignore_errors=True)
        wall, cpu, summaries = cli_run(coop, os.path.join(work, "coop.json"), ["--cooperate"], 2)
        assert sum(s["shards"]["done"] for s in summaries) == len([n for n in os.listdir(one_out) if n.endswith(".tar")])
        results["coop"].append((wall, cpu, sum(s["samples"] for s in summaries)))
    assert same_outputs(one_out, coop_out), "cooperating output differs"
    best_one, best_coop = min(results["one"]), min(results["coop"])
    cpu_one = min(r[1] for r in results["one"]) / best_one[2]
    cpu_coop = min(r[1] for r in results["coop"]) / best_coop[2]
    return {"one_process_samples_per_s": best_one[2] / best_one[0], "two_cooperating_samples_per_s": best_coop[2] / best_coop[0],
            "cooperating_over_one": (best_coop[2] / best_coop[0]) / (best_one[2] / best_one[0]),
            "cpu_ms_per_sample_one": 1000 * cpu_one, "cpu_ms_per_sample_cooperating": 1000 * cpu_coop,
            "walls": {k: [round(r[0], 1) for r in v] for k, v in results.items()}}


def print_cooperating(coop: dict) -> None:
    print(f"2 cooperating processes vs 1 process with 2 workers: {coop['cooperating_over_one']:.2f}x the throughput "
          f"({coop['two_cooperating_samples_per_s']:.0f} vs {coop['one_process_samples_per_s']:.0f} samples/s, best "
          f"walls of {coop['walls']}); CPU {coop['cpu_ms_per_sample_cooperating']:.2f} vs "
          f"{coop['cpu_ms_per_sample_one']:.2f} ms/sample")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--json", default=None)
    parser.add_argument("--only", choices=["ray", "cooperating"], default=None)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = tempfile.mkdtemp(prefix="capmill-scale-bench-")
    try:
        data = os.path.join(work, "data")
        make_shards(data, args.samples, args.shards)
        if args.only == "cooperating":
            coop = cooperating(data, work)
            print_cooperating(coop)
            return
        ray_out = ray_figures(data, work, args.shards)
        coop = cooperating(data, work) if args.only is None else None
        before = ray_out["before"]
        print(f"driver CPU per 1,000 samples: before (driver writes) {before['driver_cpu_per_1000']:.3f} s")
        for owners, r in ray_out["owners"].items():
            print(f"  after, {owners} owner(s): {r['driver_cpu_per_1000']:.3f} s "
                  f"({before['driver_cpu_per_1000'] / r['driver_cpu_per_1000']:.1f}x lower), "
                  f"wall {r['wall_s']:.1f}s, first commit at {r['first_commit_fraction']:.2f} of the run "
                  f"(target <= {ray_out['first_commit_target']:.3f})")
        print(f"  before: wall {before['wall_s']:.1f}s, first commit at {before['first_commit_fraction']:.2f} of the run")
        local, two = ray_out["local"], ray_out["ray_best_2_owners"]
        print(f"ray (2 owners) vs local (2 workers): {two['wall_s'] / local['wall_s']:.2f}x the local time "
              f"(local {local['samples'] / local['wall_s']:.0f} samples/s, ray {two['samples'] / two['wall_s']:.0f} samples/s, "
              f"before {before['samples'] / before['wall_s']:.0f} samples/s)")
        if coop is not None:
            print_cooperating(coop)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"ray": ray_out, "cooperating": coop}, f, indent=2, default=str)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
