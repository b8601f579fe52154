"""Wall time of `capmill eval` with references on 5,000 captions, and where it goes: the PTB
tokenizer, BLEU, METEOR (its JVM start apart), ROUGE-L and CIDEr-D.

    python benchmarks/eval_time.py [--samples 5000] [--refs 5] [--repeats 2] [--keep DIR]

Input: a JSON-lines file of `{key, dsc}` records and a COCO-style references file
(`{"annotations": [{"image_id": KEY, "caption": ...}]}`, `--refs` per key). Both are generated
here, not taken from a dataset: every key gets a scene (a seeded choice of subject, attribute,
action, place and detail from word lists) that its references describe with different
templates and synonyms, and a candidate caption paraphrasing the scene with some details wrong
on purpose, so the metric values spread out as with a real captioner.

1. The whole command, as a user runs it: `capmill eval captions.jsonl --fields dsc --references
   refs.json --skip clip,retrieval,capture,richness --json out.json` in a fresh process
   (interpreter start and imports included). CLIPScore, RefCLIPScore and self-retrieval are
   skipped: they need images and a CLIP model (ViT-B/32 by default), and the set has no images;
   the scene-graph metrics (CAPTURE, facts_per_caption) have their own benchmark
   (`benchmarks/capture_time.py`); what remains is the text statistics and the COCO metrics.
2. The same work, piece by piece, in another fresh process: the calls `capmill.eval.runner` makes, in its
   order (read the set and the references, text statistics, PTB-tokenise the references and the
   captions, BLEU-1..4, METEOR, ROUGE-L, CIDEr-D), each timed. capmill's eval reports no
   per-metric timings itself, so the benchmark times the same pycocoevalcap calls it makes, and
   checks that they give the same corpus values as the command's JSON. The text statistics count
   CLIP tokens with open_clip's BPE tokenizer; importing open_clip (and torch with it) and building
   the tokenizer, once per process, is its own row.
3. METEOR's JVM start, measured apart: a new `Meteor()` (a `java -jar meteor-1.5.jar` process)
   scoring one pair, i.e. JVM start plus loading METEOR's English paraphrase table, then the full
   set on that already started JVM. capmill pays both, once per `capmill eval` (one JVM serves
   every field). The PTB tokenizer starts its own JVM on every call (two per field here: the
   references, the captions); its start is measured the same way, on one caption.

Steps 1 and 2-3 alternate `--repeats` times (each in its own process, so one-time imports count
every time) and the best time of each row is reported, with every round's figure beside it: the
machine these figures come from is shared, and METEOR's per-pair round trips between Python and
the JVM slow down a lot when the cores are busy.

SPICE is not run: its Stanford CoreNLP models are not installed offline (capmill skips it with a
note).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

SUBJECTS = ["dog", "cat", "man", "woman", "child", "horse", "bird", "car", "bicycle", "boat", "cow", "train",
            "girl", "boy", "bus", "sheep", "elephant", "giraffe", "zebra", "motorcycle", "truck", "kite", "plate",
            "teddy bear", "surfer", "skateboarder", "pizza", "clock", "bench", "umbrella"]
SYNONYMS = {"dog": "puppy", "cat": "kitten", "man": "guy", "woman": "lady", "child": "kid", "car": "vehicle",
            "bicycle": "bike", "boat": "ship", "girl": "young girl", "boy": "young boy", "truck": "lorry",
            "motorcycle": "motorbike", "plate": "dish"}
ATTRS = ["small", "large", "brown", "white", "black", "red", "old", "young", "wet", "striped", "blue", "green",
         "yellow", "dirty", "shiny", "tall", "tiny", "fluffy"]
ACTIONS = ["sitting on", "running across", "standing near", "lying on", "walking along", "parked beside",
           "jumping over", "resting under", "waiting at", "riding on", "looking at", "playing in"]
PLACES = ["grass", "beach", "street", "table", "bench", "river", "road", "snow", "field", "platform", "kitchen",
          "park", "sidewalk", "lake", "hill", "parking lot", "dirt path", "wooden deck", "city square", "forest"]
DETAILS = ["on a sunny day", "at night", "in the rain", "near some trees", "with people in the background",
           "next to a fence", "under a cloudy sky", "in front of a building", "during sunset", "in the distance"]
REF_TEMPLATES = [
    "A {a} {s} {v} the {p}.",
    "There is a {a} {s2} {v} a {p} {d}.",
    "The {s} is {v} the {p}, it looks {a}.",
    "{a} {s} {v} some {p} outside",
    "A photo of a {s2} {v} the {p} {d}",
    "Someone took a picture of a {a} {s} {d}.",
    "A {s} that is {a} {v} the {p} {d}.",
]
CAND_TEMPLATES = [
    "a {a} {s} {v} the {p} {d}",
    "a {s} {v} a {p}",
    "the image shows a {a} {s} that is {v} the {p}",
    "{a} {s} on the {p}",
    "a close up of a {s} {v} the {p} {d} while the background is blurred",
]


def make_set(n: int, n_refs: int, seed: int = 0):
    """keys, {key: [references]}, {key: candidate}."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def pick(words):
        return str(words[rng.integers(len(words))])

    keys, refs, cands = [], {}, {}
    for i in range(n):
        s, a, v, p, d = (pick(w) for w in (SUBJECTS, ATTRS, ACTIONS, PLACES, DETAILS))
        key = f"{i:07d}"
        keys.append(key)
        order = rng.permutation(len(REF_TEMPLATES))[:n_refs]
        refs[key] = [REF_TEMPLATES[j].format(s=s, s2=SYNONYMS.get(s, s), a=a, v=v, p=p, d=d).capitalize()
                     for j in order]
        # Some captions get the place, the action or the attribute wrong.
        wp = pick(PLACES) if rng.random() < 0.3 else p
        wv = pick(ACTIONS) if rng.random() < 0.2 else v
        wa = pick(ATTRS) if rng.random() < 0.3 else a
        cands[key] = CAND_TEMPLATES[i % len(CAND_TEMPLATES)].format(s=s, a=wa, v=wv, p=wp, d=d)
    return keys, refs, cands


def write_inputs(root: str, keys, refs, cands) -> tuple[str, str]:
    data = os.path.join(root, "captions.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        for k in keys:
            f.write(json.dumps({"key": k, "dsc": cands[k]}) + "\n")
    refs_path = os.path.join(root, "refs.json")
    annotations = [{"image_id": k, "id": j, "caption": c}
                   for j, (k, c) in enumerate((k, c) for k in keys for c in refs[k])]
    with open(refs_path, "w", encoding="utf-8") as f:
        json.dump({"images": [{"id": k} for k in keys], "annotations": annotations, "type": "captions"}, f)
    return data, refs_path


def capmill_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "capmill")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "capmill.cli.main"]


class Clock:
    def __init__(self):
        self.rows: list[tuple[str, float]] = []

    def __call__(self, label: str, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.rows.append((label, time.perf_counter() - start))
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--refs", type=int, default=5, help="references per caption (at most 7)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of (command, pieces); the best is reported")
    parser.add_argument("--keep", default=None, help="write the inputs and outputs here (default: a temp dir)")
    parser.add_argument("--pieces", nargs=3, metavar=("DATA", "REFS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pieces:  # child process of step 2 and 3
        with _quiet():  # pycocoevalcap prints, and the tokenizer JVM writes to stderr
            result = pieces_in_process(*args.pieces[:2])
        with open(args.pieces[2], "w", encoding="utf-8") as f:
            json.dump(result, f)
        return

    import numpy as np

    from capmill.eval.coco import COCO_NAMES

    root = args.keep or tempfile.mkdtemp(prefix="capmill-eval-bench-")
    os.makedirs(root, exist_ok=True)
    keys, refs, cands = make_set(args.samples, args.refs)
    data, refs_path = write_inputs(root, keys, refs, cands)
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    words = [len(c.split()) for c in cands.values()]
    ref_words = [len(r.split()) for rs in refs.values() for r in rs]
    print(f"{args.samples} captions ({np.mean(words):.1f} words on average), {args.refs} references each "
          f"({args.samples * args.refs} references, {np.mean(ref_words):.1f} words on average); {java}\n")

    out_json = os.path.join(root, "out.json")
    cmd = capmill_command() + ["eval", data, "--fields", "dsc", "--references", refs_path,
                               "--skip", "clip,retrieval,capture,richness", "--json", out_json]
    totals, runs = [], []
    for _ in range(args.repeats):
        # 1. The whole command in a fresh process.
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        totals.append(time.perf_counter() - start)
        if proc.returncode != 0:
            sys.exit(f"capmill eval failed ({proc.returncode}):\n{proc.stderr}")
        # 2. and 3. in another fresh process, so one-time imports count in every round.
        pieces_json = os.path.join(root, "pieces.json")
        subprocess.run([sys.executable, os.path.abspath(__file__), "--pieces", data, refs_path, pieces_json],
                       check=True)
        with open(pieces_json, encoding="utf-8") as f:
            runs.append(json.load(f))

    print("$ capmill eval captions.jsonl --fields dsc --references refs.json --skip clip,retrieval,capture,richness --json out.json")
    print(proc.stdout.rstrip())
    print(f"\ncapmill eval, whole command (fresh process, best of {args.repeats}): {min(totals):.1f} s "
          f"(all: {', '.join(f'{t:.1f}' for t in totals)})\n")

    with open(out_json, encoding="utf-8") as f:
        reported = json.load(f)["dsc"]
    labels = [label for label, _ in runs[0]["rows"]]
    best = {label: min(dict(r["rows"])[label] for r in runs) for label in labels}
    pieces = sum(best.values())
    print(f"{'piece (in-process, best of ' + str(args.repeats) + ')':38} {'s':>7} {'share':>7}   all rounds")
    for label in labels:
        every = ", ".join(f"{dict(r['rows'])[label]:.2f}" for r in runs)
        print(f"{label:38} {best[label]:>7.2f} {best[label] / pieces:>7.1%}   {every}")
    print(f"{'sum of the best pieces':38} {pieces:>7.2f}")
    same = all(reported[COCO_NAMES[name]] == value for r in runs for name, value in r["corpus"].items())
    print(f"\ncorpus values equal capmill eval's JSON: {same}")
    ptb = min(r["ptb_start"] for r in runs)
    print(f"PTB tokenizer JVM start (1 caption, best of {3 * args.repeats}): {ptb:.2f} s; "
          f"it starts twice per field, {2 * ptb:.2f} s of the tokenizer rows")
    starts = [s for r in runs for s in r["meteor_starts"]]
    print(f"METEOR JVM start + paraphrase table (1 pair, {len(starts)} more fresh JVMs): "
          f"{', '.join(f'{s:.2f}' for s in starts)} s")
    if args.keep:
        print(f"\ninputs and out.json in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


def pieces_in_process(data: str, refs_path: str) -> dict:
    """Step 2 and 3: the runner's calls one by one, then the JVM starts alone."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    from capmill.eval import load_references, load_set
    from capmill.eval.coco import CocoScorers
    from capmill.eval.text_stats import text_stats
    from capmill.text.clip_bpe import clip_bpe

    clock = Clock()
    start = time.perf_counter()
    evalset = clock("read captions (jsonl)", load_set, data, ["dsc"], with_images=False)
    references = clock("read references (JSON)", load_references, refs_path)
    texts = [t for t in evalset.texts["dsc"] if t is not None]
    clock("text stats: load the CLIP BPE merges", clip_bpe)  # cached; text_stats builds it on first use
    clock("text statistics", text_stats, texts)
    coco = CocoScorers(spice=False)
    refs_tok = clock("PTB tokenizer: references", coco.tokenize, {k: references[k] for k in evalset.keys})
    tok = clock("PTB tokenizer: captions", coco.tokenize, {k: [t] for k, t in zip(evalset.keys, evalset.texts["dsc"])})
    sorted_keys = sorted(tok)
    gts = {k: refs_tok[k] for k in sorted_keys}
    res = {k: tok[k] for k in sorted_keys}
    corpus = {}
    bleu, _ = clock("BLEU-1..4", Bleu(4).compute_score, gts, res)
    corpus.update(dict(zip(("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"), bleu, strict=True)))
    first = sorted_keys[0]

    def start_meteor():
        m = Meteor()  # capmill's CocoScorers.meteor, started on first use
        m.compute_score({first: gts[first]}, {first: res[first]})
        return m

    meteor = clock("METEOR: JVM start + 1 pair", start_meteor)
    corpus["METEOR"], _ = clock("METEOR: all pairs, JVM running", meteor.compute_score, gts, res)
    corpus["ROUGE_L"], _ = clock("ROUGE-L", Rouge().compute_score, gts, res)
    corpus["CIDEr"], _ = clock("CIDEr-D", Cider().compute_score, gts, res)
    total = time.perf_counter() - start
    meteor.meteor_p.stdin.close()
    meteor.meteor_p.kill()
    meteor.meteor_p.wait()

    # 3. JVM starts alone: PTB tokenizer on one caption (x3), a second METEOR JVM on one pair.
    one = dict(zip(evalset.keys, evalset.texts["dsc"]))[first]
    ptb_start = min(_timed(coco.tokenize, {first: [one]}) for _ in range(3))
    meteor_starts = []
    for _ in range(1):
        t0 = time.perf_counter()
        m = start_meteor()
        meteor_starts.append(time.perf_counter() - t0)
        m.meteor_p.stdin.close()
        m.meteor_p.kill()
        m.meteor_p.wait()

    return {"rows": clock.rows, "total": total, "corpus": corpus, "ptb_start": ptb_start,
            "meteor_starts": meteor_starts}


@contextlib.contextmanager
def _quiet():
    """Send this process's stdout and stderr file descriptors (and the JVMs' it starts) to
    /dev/null for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
