"""Three caption formats in one pass vs three separate runs, with the same tiny model.

    python benchmarks/formats_one_pass.py [--samples 48] [--repeats 2] [--model PATH]

One pass: `caption` with formats [ssc, dsc, dsc_plus]; the image is read, decoded and resized
once, and the backend receives every format of every sample in the batch as one request list.
Separate: three runs of the same pipeline with one format each (the way a script calling a
captioner per format works). Both runs go through the whole pipeline (read → decode → caption →
write), greedy decoding with the same `max_new_tokens` and no length retries, so both produce the
same number of generated tokens per caption. Figure: captions per image-second, and the ratio.

The model defaults to the tiny random Qwen2-VL that the tests build (capmill.testing.tiny_models);
pass --model to measure a real one.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FORMATS = ["ssc", "dsc", "dsc_plus"]


def make_data(directory: str, samples: int) -> None:
    from capmill.testing.shards import Item, encode, generated, write_tar

    os.makedirs(directory, exist_ok=True)
    items = [Item(f"{i:06d}", encode(generated(i, (640, 480)), "JPEG", quality=85), "jpg",
                  f"web photo number {i} of a street", {}) for i in range(samples)]
    write_tar(os.path.join(directory, "00000.tar"), items)


def one_run(data: str, out: str, formats: list[str], model: str, max_new_tokens: int, batch_size: int) -> float:
    from capmill.config import parse_config
    from capmill.run import run

    shutil.rmtree(out, ignore_errors=True)
    config = parse_config({
        "input": {"type": "webdataset", "path": f"{data}/*.tar"},
        "output": {"path": out, "writers": ["webdataset", "parquet"]},
        "executor": {"type": "local", "batch_size": batch_size},
        "image": {"max_side": 384},
        "stages": [{"type": "caption", "formats": formats, "retries": 0,
                    "backend": {"type": "transformers", "model": model, "batch_size": batch_size * len(formats),
                                "params": {"max_new_tokens": max_new_tokens}}}],
    })
    start, cpu = time.perf_counter(), _cpu()
    summary = run(config, progress=False)
    assert summary.ok, summary.render()
    return time.perf_counter() - start, _cpu() - cpu


def _cpu() -> float:
    """CPU seconds of this process, all threads: steadier than wall time on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2, help="best of N for each mode")
    parser.add_argument("--model", default=None, help="VLM path or id (default: the tiny random Qwen2-VL)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8, help="samples per stage call")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    model = args.model
    if model is None:
        from capmill.testing.tiny_models import cached_tiny_models

        model = str(cached_tiny_models(os.path.join(HERE, "..", ".cache", "tiny_models")) / "qwen2_vl")
    work = tempfile.mkdtemp(prefix="capmill-formats-")
    try:
        data = os.path.join(work, "data")
        make_data(data, args.samples)
        # Warm-up: load the model once so file-system caches and lazy imports count for neither mode.
        one_run(data, os.path.join(work, "warm"), ["ssc"], model, 2, args.batch_size)
        together, separate = [], []
        for _ in range(args.repeats):  # alternate so background load hits both modes alike
            together.append(one_run(data, os.path.join(work, "one"), FORMATS, model, args.max_new_tokens, args.batch_size))
            runs = [one_run(data, os.path.join(work, f"sep_{f}"), [f], model, args.max_new_tokens, args.batch_size)
                    for f in FORMATS]
            separate.append((sum(r[0] for r in runs), sum(r[1] for r in runs)))
        captions = args.samples * len(FORMATS)
        w1, w3 = min(t[0] for t in together), min(t[0] for t in separate)
        c1, c3 = min(t[1] for t in together), min(t[1] for t in separate)
        print(f"model: {model}")
        print(f"{args.samples} images × {len(FORMATS)} formats, max_new_tokens {args.max_new_tokens}, "
              f"batch {args.batch_size}, torch threads {args.threads}, best of {args.repeats}")
        print(f"{'mode':<24}{'wall s':>9}{'captions/s':>12}{'CPU s':>9}{'captions/CPU-s':>16}")
        print(f"{'one pass (3 formats)':<24}{w1:>9.2f}{captions / w1:>12.2f}{c1:>9.2f}{captions / c1:>16.2f}")
        print(f"{'three separate runs':<24}{w3:>9.2f}{captions / w3:>12.2f}{c3:>9.2f}{captions / c3:>16.2f}")
        print(f"speed-up: {w3 / w1:.2f}× wall, {c3 / c1:.2f}× CPU")
        print("all repeats, wall (one pass / separate):",
              ", ".join(f"{a[0]:.2f}/{b[0]:.2f}" for a, b in zip(together, separate)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
