"""CLIPScore pairs per second: capmill's `clip_score` stage (the `clip` backend) against
torchmetrics' `CLIPScore`, both on the tiny random CLIP of `capmill.testing.tiny_models`.

    python benchmarks/clipscore.py [--pairs 2000] [--batch 64] [--threads 2] [--repeats 5] [--models DIR]

The same (image, caption) pairs go through both, in batches of the same size:

- capmill, stage: `ClipScoreStage.process` on batches of samples with one caption field each, as a
  run calls it. It embeds the image once and the caption twice (as is, for the raw cosine
  `clip:dsc`, and with the "A photo depicts " prefix, for `clipscore:dsc`), with the backend's
  own preprocessing (CLIP image processor, tokenizer) inside the timing.
- capmill, scorer only: the backend's `embed_images` + `embed_texts` on the prefixed captions and
  the CLIPScore formula, i.e. the same work as torchmetrics (one image, one text per pair).
- torchmetrics: `CLIPScore.update(images, texts)` per batch and one `compute()` at the end, the
  model and processor given as a callable (torchmetrics only loads hub ids by name) and the texts
  prefixed by hand, as the metric does not add the prefix. This is the baseline of the ratios.
- torchmetrics from PIL: the same, with the PIL -> tensor conversion
  (`torchvision.transforms.functional.pil_to_tensor`) inside the timing, i.e. starting from what
  capmill starts from.
- torchmetrics per pair (one pass, not in the ratio's baseline): `CLIPScore` gives the mean of
  what it was updated with, so a pipeline that needs a score per sample (to filter or rank) has
  to reset, update and compute once per pair, as tests/stages/test_score_clip_reference.py does.

Images are crops (96-320 px a side, some flipped, some darkened) of scikit-image's sample photos,
held as PIL images for capmill (what a decoded sample holds) and, for the baseline, as uint8
CxHxW tensors made before timing (what torchmetrics takes). Captions are sentences from six
templates over a seeded choice of words, 2 to ~48 words long (mean ~15). Every side is warmed up
on one batch first; the timed passes alternate between the sides and the best of `--repeats`
passes per side is reported, which keeps the ratios fair on a shared machine.

The script also checks that the two agree: per pair, capmill's `clipscore:dsc` against
2.5 * max(torchmetrics' 100*cos / 100, 0), and the scorer's unclamped prefixed cosine against
torchmetrics' cosine (computed per pair with the function `CLIPScore.update` calls, outside the
timing), and the mean cosine of torchmetrics' accumulated state against capmill's. The tiny
model is random, so the values mean nothing (about half the cosines are negative); only their
agreement does. `--profile FILE` writes a cProfile of one more pass of the capmill stage.
"""

from __future__ import annotations

import argparse
import time

PREFIX = "A photo depicts "
SUBJECTS = ["dog", "cat", "man", "woman", "child", "horse", "bird", "car", "bicycle", "boat", "cup of coffee",
            "rocket", "astronaut", "teapot", "train", "cow"]
ATTRS = ["small", "large", "brown", "white", "black", "red", "old", "young", "wet", "striped", "shiny", "tired"]
ACTIONS = ["sitting on", "running across", "standing near", "lying on", "walking along", "parked beside",
           "resting under", "looking at"]
PLACES = ["grass", "beach", "street", "table", "bench", "river", "road", "snow", "field", "platform", "kitchen",
          "launch pad"]
DETAILS = ["in bright daylight", "at dusk", "under a cloudy sky", "with trees in the background",
           "next to a wooden fence", "while people watch from a distance", "in a blurry photograph",
           "surrounded by scattered leaves and small stones"]
TEMPLATES = [
    "a {a} {s} {v} the {p}",
    "A {a} {s} {v} the {p} {d}.",
    "There is a {a} {s} {v} a {p}, {d}, and a second {s2} can be seen {d2}.",
    "Close-up photo of a {s}.",
    "The {s} is {v} the {p}; it looks {a} and the picture was taken {d}. In the corner a {a2} {s2} is {v2} "
    "the {p2}, {d2}, and the colours are muted.",
    "{s} {p}",
]


def make_pairs(n: int, seed: int = 0):
    """n PIL RGB images cropped from skimage's sample photos, and n captions."""
    import numpy as np
    import skimage.data as data
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "colorwheel", "camera",
                 "brick", "coins", "clock", "grass", "moon"):
        a = getattr(data, name)()
        photos.append(np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3])
    images = []
    for _ in range(n):
        a = photos[rng.integers(len(photos))]
        h, w = (int(rng.integers(96, min(320, a.shape[k]) + 1)) for k in (0, 1))
        y, x = int(rng.integers(a.shape[0] - h + 1)), int(rng.integers(a.shape[1] - w + 1))
        crop = a[y:y + h, x:x + w]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if rng.random() < 0.3:
            crop = (crop * rng.uniform(0.4, 0.9)).astype(np.uint8)
        images.append(Image.fromarray(np.ascontiguousarray(crop)))

    def pick(words):
        return str(words[rng.integers(len(words))])

    texts = []
    for i in range(n):
        t = TEMPLATES[i % len(TEMPLATES)]
        texts.append(t.format(s=pick(SUBJECTS), a=pick(ATTRS), v=pick(ACTIONS), p=pick(PLACES), d=pick(DETAILS),
                              s2=pick(SUBJECTS), a2=pick(ATTRS), v2=pick(ACTIONS), p2=pick(PLACES),
                              d2=pick(DETAILS)))
    return images, texts


def batches(n: int, size: int):
    return [(i, min(i + size, n)) for i in range(0, n, size)]


class CapmillStage:
    """The clip_score stage over samples with one caption field `dsc`."""

    name = "capmill clip_score stage"

    def __init__(self, model: str, images, texts, batch: int):
        from capmill.stages.base import RunContext
        from capmill.stages.score import ClipScoreStageConfig

        self.stage = ClipScoreStageConfig(backend={"type": "clip", "model": model, "device": "cpu",
                                                   "batch_size": batch}, fields=["dsc"]).build()
        self.stage.setup(RunContext())
        self.images, self.texts, self.batch = images, texts, batch

    def samples(self):
        from capmill.sample import Caption, Sample

        out = []
        for i, (image, text) in enumerate(zip(self.images, self.texts, strict=True)):
            s = Sample(key=f"{i:06d}", alt_text=None, captions={"dsc": Caption(text, "dsc")})
            s.image.image = image
            out.append(s)
        return out

    def run(self, limit: int | None = None):
        samples = self.samples()[:limit]
        start = time.perf_counter()
        for a, b in batches(len(samples), self.batch):
            self.stage.process(samples[a:b])
        elapsed = time.perf_counter() - start
        return elapsed, samples


class CapmillScorer:
    """The stage's backend alone: one image and one prefixed text embedding per pair."""

    name = "capmill scorer only"

    def __init__(self, backend, images, texts, batch: int):
        self.backend, self.images, self.texts, self.batch = backend, images, texts, batch

    def run(self, limit: int | None = None):
        import numpy as np

        from capmill.metrics.embedding import clipscore_from_cosine, unit_rows

        n = len(self.images) if limit is None else limit
        cos = []
        start = time.perf_counter()
        for a, b in batches(n, self.batch):
            img = unit_rows(self.backend.embed_images(self.images[a:b]))
            txt = unit_rows(self.backend.embed_texts([PREFIX + t for t in self.texts[a:b]]))
            cos.append(np.einsum("ij,ij->i", img, txt))
        cos = np.concatenate(cos)
        scores = clipscore_from_cosine(cos)
        return time.perf_counter() - start, (cos, scores)


class TorchMetrics:
    name = "torchmetrics CLIPScore"

    def __init__(self, model_dir: str, tensors, texts, batch: int, images=None):
        from transformers import CLIPModel, CLIPProcessor

        from capmill.testing.reference import torchmetrics_clip_score

        model = CLIPModel.from_pretrained(model_dir).eval()
        processor = CLIPProcessor.from_pretrained(model_dir)

        self.metric = torchmetrics_clip_score(model, processor)
        self.model, self.processor = self.metric.model, processor
        self.tensors, self.texts, self.batch = tensors, [PREFIX + t for t in texts], batch
        self.images = images  # PIL images: converted inside the timing
        if images is not None:
            self.name = "torchmetrics, from PIL"

    def run(self, limit: int | None = None):
        from torchvision.transforms.functional import pil_to_tensor

        n = len(self.tensors) if limit is None else limit
        self.metric.reset()
        start = time.perf_counter()
        for a, b in batches(n, self.batch):
            pixels = self.tensors[a:b] if self.images is None else [pil_to_tensor(im) for im in self.images[a:b]]
            self.metric.update(pixels, self.texts[a:b])
        clamped = float(self.metric.compute())
        elapsed = time.perf_counter() - start
        mean_cos = float(self.metric.score) / int(self.metric.n_samples) / 100  # before compute()'s clamp
        return elapsed, (clamped, mean_cos)

    def run_per_pair(self, limit: int | None = None):
        """One reset/update/compute per pair: a CLIPScore for every pair from the public class."""
        import numpy as np

        start = time.perf_counter()
        out = []
        for i in range(len(self.tensors) if limit is None else limit):
            self.metric.reset()
            self.metric.update(self.tensors[i:i + 1], self.texts[i:i + 1])
            out.append(float(self.metric.compute()))
        return time.perf_counter() - start, np.array(out) / 100 * 2.5

    def per_pair(self):
        """100·cos per pair, through the function CLIPScore.update calls (untimed)."""
        import numpy as np
        import torch
        from torchmetrics.functional.multimodal.clip_score import _clip_score_update

        out = []
        with torch.no_grad():
            for a, b in batches(len(self.tensors), self.batch):
                score, _ = _clip_score_update(self.tensors[a:b], self.texts[a:b], self.model, self.processor)
                out.append(score.double().numpy())
        return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default=None,
                        help="folder of tiny models (default: built once into .cache/tiny_models)")
    parser.add_argument("--profile", default=None, help="write a cProfile of one capmill stage pass here")
    args = parser.parse_args()

    import numpy as np
    import torch
    import torchmetrics
    import transformers
    from torchvision.transforms.functional import pil_to_tensor

    from capmill.testing.tiny_models import cached_tiny_models

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    root = args.models or str(cached_tiny_models(".cache/tiny_models"))
    model_dir = f"{root}/clip"
    images, texts = make_pairs(args.pairs)
    tensors = [pil_to_tensor(im) for im in images]
    words = [len(t.split()) for t in texts]
    print(f"{args.pairs} pairs, batch {args.batch}, {args.threads} torch threads, tiny CLIP {model_dir}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, torchmetrics {torchmetrics.__version__}")
    print(f"images {min(im.width for im in images)}-{max(im.width for im in images)} px wide, "
          f"captions {min(words)}-{max(words)} words (mean {np.mean(words):.1f})\n")

    stage = CapmillStage(model_dir, images, texts, args.batch)
    metric = TorchMetrics(model_dir, tensors, texts, args.batch)
    sides = [stage, CapmillScorer(stage.stage.backend, images, texts, args.batch), metric,
             TorchMetrics(model_dir, tensors, texts, args.batch, images=images)]
    for side in sides:
        side.run(limit=args.batch)  # warm-up: first-call allocations, tokenizer caches
    best = {side.name: float("inf") for side in sides}
    results = {}
    for _ in range(args.repeats):
        for side in sides:
            elapsed, out = side.run()
            best[side.name] = min(best[side.name], elapsed)
            results[side.name] = out

    metric.run_per_pair(limit=args.batch)  # warm-up
    per_pair_s, per_pair_scores = metric.run_per_pair()

    if args.profile:
        import cProfile

        cProfile.runctx("stage.run()", globals(), {"stage": stage}, args.profile)

    ours = np.array([s.scores["clipscore:dsc"] for s in results[stage.name]])
    scorer_cos, scorer_scores = results[sides[1].name]
    theirs_cos = metric.per_pair() / 100
    theirs = 2.5 * np.maximum(theirs_cos, 0)
    print(f"{'side':28} {'s':>7} {'pairs/s':>9} {'× torchmetrics':>15}")
    base = args.pairs / best[metric.name]
    for side in sides:
        rate = args.pairs / best[side.name]
        print(f"{side.name:28} {best[side.name]:>7.2f} {rate:>9.1f} {rate / base:>15.2f}")
    rate = args.pairs / per_pair_s
    print(f"{'torchmetrics, one per pair':28} {per_pair_s:>7.2f} {rate:>9.1f} {rate / base:>15.2f}  (one pass)")
    print()
    print(f"max |capmill stage clipscore - torchmetrics one per pair|: {np.abs(ours - per_pair_scores).max():.2e}")
    print(f"max |capmill stage clipscore - torchmetrics| per pair: {np.abs(ours - theirs).max():.2e}")
    print(f"max |capmill scorer clipscore - torchmetrics| per pair: {np.abs(scorer_scores - theirs).max():.2e}")
    print(f"max |capmill scorer cos - torchmetrics cos| (unclamped): {np.abs(scorer_cos - theirs_cos).max():.2e}")
    print(f"pairs with positive cosine (clamp not hit): {(theirs_cos > 0).sum()} of {args.pairs}")
    clamped, tm_mean_cos = results[metric.name]
    print(f"mean cosine: torchmetrics state {tm_mean_cos:.7f}, capmill scorer {scorer_cos.mean():.7f} "
          f"(torchmetrics' compute() clamps the mean: {clamped:.4f})")
    stage.stage.teardown()


if __name__ == "__main__":
    main()
