"""The judge's position-bias rate on a fixed set: each image judged in two orders.

    python benchmarks/judge_bias.py [--model DIR_OR_HUB_ID] [--images 14] [--seed 0]

The fixed set: the scikit-image photos that `capmill.testing` ships (their AltTexts describe them),
each with four candidates — its own AltText and three other photos' AltTexts, drawn with a fixed
seed. The `judge` stage (list mode, `bias_check: 1`) shows them in a seeded order and again in the
reverse order; the report gives, per judge, the share of answers that parsed, how often the true
caption won, the share of comparisons whose two orders disagree (the position-bias rate,
`capmill.verdicts.bias_rate`) and how often position 1 won.

Judges: a transformers VLM (`--model`, default the tiny random Idefics3 of
`capmill.testing.tiny_models`, whose answers rarely parse: it writes gibberish), and two test
doubles with known behaviour that check the measurement itself — one that always names the true
caption wherever it is shown (rate 0) and one that always answers 1 (rate 1 when both orders
name a different candidate first).
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections import Counter


def fixed_set(n: int, seed: int):
    from capmill.sample import Caption, ImageRef, Sample
    from capmill.testing.shards import PHOTOS, photo

    names = list(PHOTOS)[:n]
    rng = random.Random(seed)
    samples, truth = [], {}
    for name in names:
        others = rng.sample([m for m in names if m != name], 3)
        texts = [PHOTOS[name]] + [PHOTOS[m] for m in others]
        rng.shuffle(texts)
        image = photo(name).convert("RGB")
        image.thumbnail((384, 384))
        sample = Sample(key=name, image=ImageRef(image=image))
        for i, text in enumerate(texts):
            sample.captions[f"cand.{i}"] = Caption(text=text, source=f"cand.{i}")
        samples.append(sample)
        truth[name] = f"cand.{texts.index(PHOTOS[name])}"
    return samples, truth


def judge(backend: dict, samples, seed: int):
    from capmill.stages.base import RunContext
    from capmill.stages.judge import JudgeStageConfig

    stage = JudgeStageConfig.model_validate({"backend": backend, "bias_check": 1.0, "seed": seed}).build()
    stage.setup(RunContext())
    out = stage.process([s for s in samples])
    stage.teardown()
    return [s.captions["judged"].meta for s in out]


def report(label: str, metas: list[dict], truth: dict[str, str], keys: list[str]) -> None:
    from capmill.verdicts import bias_rate

    answers = [m for m in metas] + [m["position_bias"] for m in metas]
    parsed = sum(a.get("verdict") is not None for a in answers)
    rate, compared = bias_rate(m["position_bias"] for m in metas)
    correct = sum(m.get("verdict") is not None and m["chosen"] == truth[k] for m, k in zip(metas, keys, strict=True))
    firsts = Counter(a.get("verdict") for a in answers if a.get("verdict") is not None)
    shown = f"{100 * rate:.0f}% of {compared}" if rate is not None else f"— (0 of {len(metas)} compared)"
    first = f"{100 * firsts[1] / parsed:.0f}%" if parsed else "—"
    print(f"{label:34} {100 * parsed / len(answers):>7.0f}% {correct:>4}/{len(metas):<3} {shown:>14} {first:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a transformers VLM (default: the tiny random Idefics3)")
    parser.add_argument("--images", type=int, default=14)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from capmill.testing.tiny_models import build_all

    samples, truth = fixed_set(args.images, args.seed)
    keys = [s.key for s in samples]
    model = args.model or f"{build_all(tempfile.mkdtemp(prefix='capmill-tiny-'), ('idefics3',))}/idefics3"
    print(f"{len(samples)} photos × 4 candidates, each judged in a seeded order and its reverse (seed {args.seed})\n")
    print(f"{'judge':34} {'parsed':>8} {'true won':>8} {'bias rate':>14} {'pos. 1':>9}")
    first = {"type": "fake", "script": [{"when": "Caption 1:", "answer": "1"}]}
    vlm = {"type": "transformers", "model": model, "params": {"max_new_tokens": 6}}
    for label, backend in ((f"VLM {model.rsplit('/', 1)[-1]}", vlm), ("test double: always answers 1", first)):
        report(label, judge(backend, fixed_set(args.images, args.seed)[0], args.seed), truth, keys)
    # The fair double knows each image's true caption: one judge per image (another image's rule
    # would match this image's prompt, which shows other AltTexts as distractors).
    metas = []
    for sample in fixed_set(args.images, args.seed)[0]:
        true = sample.captions[truth[sample.key]].text
        fair = {"type": "fake", "script": [{"when": f"Caption {p}:\n<caption>\n{true}\n", "answer": str(p)}
                                           for p in range(1, 5)]}
        metas += judge(fair, [sample], args.seed)
    report("test double: names the true caption", metas, truth, keys)

if __name__ == "__main__":
    main()
