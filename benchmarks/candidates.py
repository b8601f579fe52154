"""Wall time of K = 1, 4 and 8 candidates per image relative to K = 1, and model `generate` calls
per batch, on the tiny random Idefics3 of `capmill.testing.tiny_models`.

    python benchmarks/candidates.py [--images 16] [--batch 8] [--tokens 16] [--repeats 3] [--threads 1]

Two ways of asking for K candidates in one `candidates` stage:

- settings: K decoding settings (greedy, then beam search with 2 … K beams: SLAM-AAC's refine
  sweeps beams 2–8), one candidate each — the backend runs one `generate` per setting;
- samples: one sampled setting with n = K — one `generate` for all K.

Each row runs the stage alone (the images are decoded once, before timing) over the same images in
batches of `--batch`, with the output guards off so that no regeneration adds calls, and counts
the model's `generate` calls per batch, which must be one per decoding setting whatever the batch
size. Best of `--repeats`. The tiny model is random: the ratios show what K costs in the backend's
own work (per-call overhead, beams, sampling), not what a real model's K costs.
"""

from __future__ import annotations

import argparse
import tempfile
import time


def settings_for(k: int, mode: str, tokens: int) -> list[dict]:
    params = {"max_new_tokens": tokens}
    if mode == "samples":
        return [{"format": "ssc", "n": k, "params": {**params, "temperature": 0.9, "seed": 0}}]
    greedy = [{"format": "ssc", "params": params}]
    if k == 1:
        return greedy
    return greedy + [{"format": "ssc", "params": params, "sweep": {"num_beams": list(range(2, k + 1))}}]


def measure(model_dir: str, images, k: int, mode: str, batch: int, tokens: int, repeats: int) -> tuple[float, list[int]]:
    from capmill.sample import ImageRef, Sample
    from capmill.stages.base import RunContext
    from capmill.stages.candidates import CandidatesStageConfig

    stage = CandidatesStageConfig.model_validate({
        "captioners": [{"type": "transformers", "model": model_dir, "device": "cpu", "batch_size": batch}],
        "settings": settings_for(k, mode, tokens), "guards": {"enabled": False}}).build()
    stage.setup(RunContext())
    model = stage.backends[0].model
    calls: list[int] = []
    original = model.generate

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.generate = counting
    samples = lambda: [Sample(key=f"s{i}", image=ImageRef(image=im)) for i, im in enumerate(images)]  # noqa: E731
    stage.process(samples()[:batch])  # warm-up
    best = float("inf")
    per_batch: list[int] = []
    for _ in range(repeats):
        fresh = samples()
        start = time.perf_counter()
        per_batch = []
        for i in range(0, len(fresh), batch):
            before = len(calls)
            out = stage.process(fresh[i:i + batch])
            per_batch.append(len(calls) - before)
            assert all(len(s.captions) == k for s in out), "every image gets K candidates"
        best = min(best, time.perf_counter() - start)
    stage.teardown()
    return best, per_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=None, help="folder of tiny models (built into a temp dir if omitted)")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from capmill.testing.tiny_models import build_all

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)) for _ in range(args.images)]
    root = args.models or build_all(tempfile.mkdtemp(prefix="capmill-tiny-"), ("idefics3",))
    model = f"{root}/idefics3"
    print(f"{args.images} images in batches of {args.batch}, ≤ {args.tokens} new tokens, {args.threads} torch "
          f"thread(s), best of {args.repeats}\n")
    print(f"{'mode':8} {'K':>2} {'settings':>8} {'generate/batch':>15} {'wall s':>8} {'× K=1':>7} {'s per candidate':>16}")
    for mode in ("settings", "samples"):
        base = None
        for k in (1, 4, 8):
            wall, per_batch = measure(model, images, k, mode, args.batch, args.tokens, args.repeats)
            base = base or wall
            settings = len(settings_for(k, mode, args.tokens)) if mode == "samples" else k
            print(f"{mode:8} {k:>2} {settings:>8} {'/'.join(map(str, per_batch)):>15} {wall:>8.2f} "
                  f"{wall / base:>7.2f} {wall / (k * args.images):>16.4f}")


if __name__ == "__main__":
    main()
