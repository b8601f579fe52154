"""Data-path throughput, overlap and memory of the local executor.

    python benchmarks/datapath.py [--samples 2000] [--shards 8] [--skip-memory]

1. Throughput: read → decode + hygiene + resize to 384 px → caption(fake, zero delay) → write
   webdataset + parquet, against a plain loop doing the same work with PIL and tarfile and no
   capmill (decode, convert, resize, write the same bytes). Single-core figures pin the process
   to one CPU; the two-worker figure uses two.
2. Overlap: the fake backend sleeps per batch so that the model alone takes as long as the data
   path alone; end-to-end time over the slower of the two (1.0 = perfect overlap).
3. Memory: peak RSS of a run over N and over 10×N samples (subprocesses).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))


def make_shards(directory: str, samples: int, shards: int, size=(640, 480)) -> list[str]:
    from capmill.testing.shards import Item, encode, generated, write_tar

    os.makedirs(directory, exist_ok=True)
    per = samples // shards
    paths = []
    for s in range(shards):
        path = os.path.join(directory, f"{s:05d}.tar")
        if not os.path.exists(path):
            items = [Item(f"{s:03d}{i:05d}", encode(generated(s * per + i, size), "JPEG", quality=85), "jpg",
                          f"a web image number {i} with some alt text", {}) for i in range(per)]
            write_tar(path, items)
        paths.append(path)
    return paths


def baseline(paths: list[str], out_dir: str, max_side: int = 384) -> int:
    """What a hand-written script does: decode, convert, resize, write the same bytes back out."""
    n = 0
    for path in paths:
        out = tarfile.open(os.path.join(out_dir, os.path.basename(path)), "w")
        with tarfile.open(path) as tar:
            members = {}
            for info in tar:
                members.setdefault(info.name.split(".")[0], {})[info.name.split(".", 1)[1]] = tar.extractfile(info).read()
        for key, m in members.items():
            img = Image.open(io.BytesIO(m["jpg"])).convert("RGB")
            img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
            for ext, data in (("jpg", m["jpg"]), ("txt", m["txt"]), ("json", json.dumps({"key": key, "size": img.size}).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
            n += 1
        out.close()
    return n


def capmill_config(data: str, out: str, workers: int, delay: float = 0.0, batch_size: int = 16) -> dict:
    return {
        "input": {"type": "webdataset", "path": f"{data}/*.tar"},
        "output": {"path": out, "writers": ["webdataset", "parquet"]},
        "executor": {"type": "local", "batch_size": batch_size, "workers": workers, "shards_in_flight": 2},
        "image": {"max_side": 384},
        "stages": [{"type": "caption", "backend": {"type": "fake", "delay_s": delay}, "formats": ["ssc"]}],
    }


def run_capmill(config: dict, limit: int | None = None) -> tuple[float, int]:
    from capmill.config import parse_config
    from capmill.run import run

    shutil.rmtree(config["output"]["path"], ignore_errors=True)
    start = time.perf_counter()
    summary = run(parse_config(config), progress=False, limit=limit)
    return time.perf_counter() - start, summary.samples


def timed(fn, *args):
    start = time.perf_counter()
    n = fn(*args)
    return time.perf_counter() - start, n


def pinned(cpus: set[int]):
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)


def throughput(data: str, work: str, samples: int) -> dict:
    all_cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else {0}
    one = {min(all_cpus)}
    results = {}
    # Warm-up: a few samples through the same pipeline, so one-time costs of the process (imports,
    # the CLIP tokenizer of the length report) count for neither side.
    run_capmill(capmill_config(data, os.path.join(work, "warm"), workers=1), limit=32)
    pinned(one)
    out = os.path.join(work, "baseline")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    secs, n = timed(baseline, sorted(os.path.join(data, p) for p in os.listdir(data)), out)
    results["baseline_1cpu"] = n / secs
    secs, n = run_capmill(capmill_config(data, os.path.join(work, "c1"), workers=1))
    results["capmill_1cpu_1worker"] = n / secs
    pinned(all_cpus)
    secs, n = run_capmill(capmill_config(data, os.path.join(work, "c2"), workers=len(all_cpus)))
    results[f"capmill_{len(all_cpus)}cpu_{len(all_cpus)}workers"] = n / secs
    results["data_path_seconds"] = secs
    return results


def overlap(data: str, work: str, samples: int, data_seconds: float, batch_size: int = 16) -> dict:
    batches = -(-samples // batch_size)
    delay = data_seconds / batches  # model alone ≈ data path alone
    secs, _ = run_capmill(capmill_config(data, os.path.join(work, "ov"), workers=2, delay=delay, batch_size=batch_size))
    model_seconds = delay * batches
    return {"data_path_seconds": data_seconds, "model_seconds": model_seconds, "end_to_end_seconds": secs,
            "ratio_to_slower": secs / max(data_seconds, model_seconds)}


def peak_rss_of_run(data: str, out: str) -> float:
    script = (
        "import json,resource,sys\n"
        "from capmill.config import parse_config\nfrom capmill.run import run\n"
        "c=json.loads(sys.argv[1]); run(parse_config(c), progress=False)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    config = capmill_config(data, out, workers=2)
    config["input"]["key_prefix"] = "shard"
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(config)], capture_output=True, text=True, check=True)
    return int(proc.stdout.strip().splitlines()[-1]) / 1024  # MiB


def memory(data: str, work: str) -> dict:
    """N samples vs 10×N: the second input lists each shard ten times under new names."""
    small, large = os.path.join(work, "mem_small"), os.path.join(work, "mem_large")
    for d in (small, large):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    shards = sorted(p for p in os.listdir(data) if p.endswith(".tar"))
    for p in shards:
        os.link(os.path.join(data, p), os.path.join(small, p))
        for copy in range(10):
            os.link(os.path.join(data, p), os.path.join(large, f"c{copy}_{p}"))
    a = peak_rss_of_run(small, os.path.join(work, "mem_out_small"))
    b = peak_rss_of_run(large, os.path.join(work, "mem_out_large"))
    return {"peak_rss_mib_N": a, "peak_rss_mib_10N": b, "ratio": b / a}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--memory-samples", type=int, default=400)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="capmill-bench-")
    try:
        data = os.path.join(work, "data")
        make_shards(data, args.samples, args.shards)
        tp = throughput(data, work, args.samples)
        ov = overlap(data, work, args.samples, tp["data_path_seconds"])
        results = {"throughput_samples_per_s": tp, "overlap": ov}
        if not args.skip_memory:
            mem_data = os.path.join(work, "mem_data")
            make_shards(mem_data, args.memory_samples, 4)
            results["memory"] = memory(mem_data, work)
        base = tp["baseline_1cpu"]
        print(f"baseline loop, 1 CPU           {base:8.1f} samples/s")
        for name, value in tp.items():
            if name.startswith("capmill"):
                print(f"{name:<30} {value:8.1f} samples/s  ({value / base:.2f}x baseline)")
        print(f"overlap: data {ov['data_path_seconds']:.1f}s, model {ov['model_seconds']:.1f}s, "
              f"end-to-end {ov['end_to_end_seconds']:.1f}s = {ov['ratio_to_slower']:.2f}x the slower")
        if "memory" in results:
            m = results["memory"]
            print(f"memory: peak RSS {m['peak_rss_mib_N']:.0f} MiB for N, {m['peak_rss_mib_10N']:.0f} MiB for 10N ({m['ratio']:.2f}x)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
