"""Captions per second of the transformers backend at batch 1, 8 and 32 on the tiny LLaVA and
Qwen2-VL models, as a ratio to batch 1 (the per-image loop that trainer scripts use).

    python benchmarks/backend_batching.py [--images 64] [--tokens 16] [--threads 2]

Each setting captions the same images with greedy decoding; the script checks that every batch
size gives the same captions as batch 1 before it reports a figure. The tiny models are random,
so absolute numbers say nothing about real models; the ratio shows what one padded `generate`
per batch saves over one call per image in the backend's own overhead (processor, padding,
generation loop).
"""

from __future__ import annotations

import argparse
import tempfile
import time


def measure(model_dir: str, images, batch: int, tokens: int) -> tuple[float, list[list[str]]]:
    from capmill.backends.base import GenerationParams, VLMRequest
    from capmill.backends.transformers import TransformersConfig

    backend = TransformersConfig(model=model_dir, batch_size=batch,
                                 params=GenerationParams(max_new_tokens=tokens)).build()
    backend.load()
    requests = [VLMRequest(prompt="Write one short sentence about the main subject of this image.", images=[im])
                for im in images]
    backend.generate(requests[:batch])  # warm-up
    start = time.perf_counter()
    outputs = []
    for i in range(0, len(requests), batch):
        outputs += backend.generate(requests[i:i + batch])
    elapsed = time.perf_counter() - start
    backend.close()
    return len(requests) / elapsed, [g.texts for g in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=None, help="folder of tiny models (built into a temp dir if omitted)")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from capmill.testing.tiny_models import build_all

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)) for _ in range(args.images)]
    root = args.models or build_all(tempfile.mkdtemp(prefix="capmill-tiny-"), ("llava", "qwen2_vl"))
    print(f"{args.images} images, {args.tokens} new tokens max, greedy, {args.threads} torch threads\n")
    print(f"{'model':10} {'batch':>5} {'captions/s':>11} {'× batch 1':>10}")
    for family in ("llava", "qwen2_vl"):
        base, base_texts = measure(f"{root}/{family}", images, 1, args.tokens)
        print(f"{family:10} {1:>5} {base:>11.1f} {1.0:>10.2f}")
        for batch in (8, 32):
            rate, texts = measure(f"{root}/{family}", images, batch, args.tokens)
            same = "" if texts == base_texts else "  (captions differ from batch 1!)"
            print(f"{family:10} {batch:>5} {rate:>11.1f} {rate / base:>10.2f}{same}")


if __name__ == "__main__":
    main()
