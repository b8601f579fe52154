"""The verifying methods (ScaleCap, Patch Matters, Visual Fact Checker, FuseCap) against a plain
caption stage, on the tiny models.

    python benchmarks/verify_methods.py [--samples 16] [--batch-sizes 4,8] [--repeats 2]

Each method is its packaged recipe with every model swapped for the tiny model of its role
(`--models`: tiny Idefics3 as VLM, tiny Qwen2 as LLM, tiny OWLv2 as detector, RapidOCR, spaCy),
run stage by stage on the same decoded images in batches of B. Figures per method and B:
- backend calls per batch of the method's own stage (every call into a backend: generate, chat,
  ask, forced_logits, detect, read, analyze): must not grow with B, since every step hands the
  backend all of a batch's requests at once;
- requests per sample (what the calls carried) and generated tokens per sample;
- wall time of the method's stage relative to the recipe's plain `caption` stage on the same
  images in the same run (best of `--repeats`).
The tiny models' text is gibberish, so the later steps mostly fall back (the summary says how
often); the figures describe the machinery's cost, not a real model's.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ["scalecap", "patch_matters", "vfc", "fusecap"]
CALLS = ("generate", "chat", "ask", "forced_logits", "detect", "read", "analyze")


class Counting:
    """A backend wrapper counting calls, requests and generated tokens."""

    def __init__(self, inner, tally: Counter):
        self._inner, self._tally = inner, tally

    def __getattr__(self, name):
        value = getattr(self._inner, name)
        if name not in CALLS:
            return value

        def call(requests, *args, **kwargs):
            self._tally["calls"] += 1
            self._tally["requests"] += len(requests)
            out = value(requests, *args, **kwargs)
            for result in out:
                tokens = getattr(result, "meta", {}).get("completion_tokens") if hasattr(result, "meta") else None
                if tokens:
                    self._tally["tokens"] += sum(tokens)
            return out

        return call


def samples(n: int):
    from capmill.sample import ImageRef, Sample
    from capmill.testing.shards import PHOTOS, generated, photo

    names = list(PHOTOS)
    out = []
    for i in range(n):
        image = photo(names[i]).convert("RGB") if i < len(names) else generated(i, (320, 240))
        image.thumbnail((384, 384))
        out.append(Sample(key=f"{i:06d}", image=ImageRef(image=image), alt_text=f"photo number {i} of a street"))
    return out


def stages_of(method: str, models: str):
    from capmill.config import parse_config
    from capmill.recipes import config_tree
    from capmill.testing.smoke import with_tiny_models

    tree = with_tiny_models(config_tree(None, method), models)
    tree["input"]["path"] = "unused/*.tar"
    return parse_config(tree).stages


def wrap_backends(stage) -> Counter:
    """Put counting wrappers around the backends of a set-up stage; returns their shared tally."""
    tally: Counter = Counter()
    wrapped: dict[int, Counting] = {}
    for attr in ("vlm", "llm", "scorer", "analyzer", "detector", "vqa", "ocr", "backend"):
        backend = getattr(stage, attr, None)
        if backend is not None:
            # one backend in two roles (ScaleCap's vlm rates too) is one wrapper
            setattr(stage, attr, wrapped.setdefault(id(backend), Counting(backend, tally)))
    return tally


def timed(stage, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        stage.process(batch)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--batch-sizes", default="4,8")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import copy

    import torch

    from capmill.stages.base import RunContext
    from capmill.testing.tiny_models import cached_tiny_models

    torch.set_num_threads(args.threads)
    models = str(cached_tiny_models(os.path.join(HERE, "..", ".cache", "tiny_models")))
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(f"{args.samples} images (real photos, then generated), tiny models, torch threads {args.threads}, "
          f"best of {args.repeats}")
    print(f"{'method':<14}{'B':>3}{'calls/batch':>13}{'requests/sample':>17}{'tokens/sample':>15}"
          f"{'wall × caption':>16}  fallbacks")
    for method in METHODS:
        caption_cfg, method_cfg = stages_of(method, models)
        caption, stage = caption_cfg.build(), method_cfg.build()
        caption.setup(RunContext())
        stage.setup(RunContext())
        tally = wrap_backends(stage)
        key = stage.key if hasattr(stage, "key") else stage.config.store_as
        try:
            for size in sizes:
                best_caption = best_method = float("inf")
                fallbacks: Counter = Counter()
                for _ in range(args.repeats):
                    data = samples(args.samples)
                    best_caption = min(best_caption, timed(caption, [data[i:i + size] for i in range(0, len(data), size)]))
                    fresh = [copy.copy(s) for s in data]
                    for s in fresh:
                        s.captions = dict(s.captions)
                    tally.clear()
                    best_method = min(best_method, timed(stage, [fresh[i:i + size] for i in range(0, len(fresh), size)]))
                    fallbacks = Counter(str(s.captions[key].meta.get("fallback")) for s in fresh if s.ok)
                    fallbacks["failed"] = sum(1 for s in fresh if not s.ok)
                n_batches = -(-args.samples // size)
                print(f"{method:<14}{size:>3}{tally['calls'] / n_batches:>13.1f}{tally['requests'] / args.samples:>17.1f}"
                      f"{tally['tokens'] / args.samples:>15.1f}{best_method / best_caption:>16.2f}  "
                      + ", ".join(f"{k} {v}" for k, v in sorted(fallbacks.items()) if v))
        finally:
            caption.teardown()
            stage.teardown()


if __name__ == "__main__":
    main()
