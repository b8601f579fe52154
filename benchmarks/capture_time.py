"""CAPTURE on 5,000 dense captions × 5 references with the offline parser: time per caption, the
share spent parsing, and matching + scoring once parsed against the published implementation.

    python benchmarks/capture_time.py [--samples 5000] [--refs 5] [--baseline 1000]

Input: generated, not taken from a dataset (the word lists of `benchmarks/eval_time.py`): every
key gets a scene, a dense candidate of three sentences (the scene, with some details wrong on
purpose, plus two sentences about other things in it) and `--refs` references of two sentences
each, so graphs have the objects, attributes and relations of a detail caption.

Rows, each timed once in this process (the machine is shared; the ratios are what to read):

1. parse: every distinct text through capmill's spaCy scene-graph rules with `nlp.pipe` (batches
   of 256); the baseline parses `--baseline` texts one `nlp(text)` call each, as a parser without
   batching (e.g. `scenegraphparser`) does;
2. elements: lemmatise (WordNet) and filter every graph (stop objects, non-nouns);
3. match + score: the exact and synonym passes and the scores of every (caption, reference)
   pair; the baseline runs the published CAPTURE's `compute_f_score` (package `capture_metric`,
   when installed) on the very same elements, soft pass off, and the values are checked equal;
4. soft: embedding the phrases the soft pass needs (all-MiniLM-L6-v2, bundled) and the soft pass
   itself (cosine matrices), reported apart: the embedding is model inference, not matching;
5. the T5 parser's batching (`factual_t5` on the tiny random T5 of `capmill.testing.tiny_models`,
   `--t5-texts` texts, 5 beams): batches of 32 sentences against one sentence per `generate`.
   The FACTUAL weights cannot be fetched here, so this measures the batching, not the parser.

Target (BENCHMARKS.md): matching and scoring once parsed (rows 2 + 3 + the soft pass, without the
embedding model) under 5 ms per caption.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

EXTRA = ["A {a} {s} stands near a {p}.", "There is a {a} {s} in the background.", "The {p} has a {a} {s} on it.",
         "Behind them, a {s} is {v} the {p}.", "A {a} {s} and a {s2} are close to each other."]


def dense_set(n: int, n_refs: int, seed: int = 0):
    """keys, {key: [references]}, {key: dense candidate}."""
    import numpy as np
    from eval_time import ACTIONS, ATTRS, PLACES, SUBJECTS, make_set

    keys, refs, cands = make_set(n, n_refs, seed)
    rng = np.random.default_rng(seed + 1)

    def sentence():
        s, s2, a, v, p = (str(w[rng.integers(len(w))]) for w in (SUBJECTS, SUBJECTS, ATTRS, ACTIONS, PLACES))
        return EXTRA[rng.integers(len(EXTRA))].format(s=s, s2=s2, a=a, v=v, p=p)

    extra = {k: [sentence(), sentence()] for k in keys}
    dense = {k: f"{cands[k].capitalize()}. {extra[k][0]} {extra[k][1]}" for k in keys}
    full_refs = {k: [f"{r.rstrip('.')}. {extra[k][i % 2] if rng.random() < 0.7 else sentence()}"
                     for i, r in enumerate(refs[k])] for k in keys}
    return keys, full_refs, dense


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--refs", type=int, default=5)
    parser.add_argument("--baseline", type=int, default=1000, help="texts parsed one call each for the baseline")
    parser.add_argument("--t5-texts", type=int, default=200, help="texts for the T5 batching row (0: skip it)")
    args = parser.parse_args()

    from capmill.backends.scene_graph import SpacySceneGraphConfig, graph_of
    from capmill.backends.scorers import SentenceTransformersConfig
    from capmill.eval.capture import CaptureConfig, elements, match_pair, sample_scores, soft_phrases, stop_objects
    from capmill.eval.graphs import PhraseVectors
    from capmill.eval.wordnet import WordNet

    keys, refs, cands = dense_set(args.samples, args.refs)
    texts = list(dict.fromkeys([cands[k] for k in keys] + [r for k in keys for r in refs[k]]))
    print(f"{len(keys)} captions × {args.refs} references, {len(texts)} distinct texts; "
          f"mean candidate {sum(len(cands[k].split()) for k in keys) / len(keys):.0f} words")
    sg = SpacySceneGraphConfig(batch_size=256).build()
    sg.load()
    wordnet = WordNet()
    wordnet.synonyms("dog")  # WordNet's lazy load is not matching time
    rows: list[tuple[str, float, str]] = []

    start = time.perf_counter()
    graphs = dict(zip(texts, sg.parse(texts), strict=True))
    parse_s = time.perf_counter() - start
    sample = texts[: args.baseline]
    start = time.perf_counter()
    for t in sample:
        graph_of(sg.nlp(t))
    one_by_one = (time.perf_counter() - start) / len(sample)
    rows.append(("parse (nlp.pipe, 256 a batch)", parse_s, f"{parse_s / len(texts) * 1e3:.2f} ms per text; "
                 f"{one_by_one / (parse_s / len(texts)):.2f}× faster than one nlp() per text"))

    config = CaptureConfig()
    stop = stop_objects()
    start = time.perf_counter()
    elems = {t: elements(g, g.nouns, wordnet, stop) for t, g in graphs.items()}
    elements_s = time.perf_counter() - start
    rows.append(("elements (lemmas, filters)", elements_s, ""))

    # NLTK's own WordNet caches are warmed for both sides first (an untimed pass of the published
    # code over a tenth of the set); capmill's per-evaluation synonym cache then starts empty.
    reference = _reference()
    if reference is not None:
        for k in keys[: max(1, len(keys) // 10)]:
            c = elems[cands[k]]
            for e in (elems[r] for r in refs[k]):
                reference.compute_f_score((e.objects, e.attributes, e.relations), (c.objects, c.attributes, c.relations))
        start = time.perf_counter()
        theirs = {}
        for k in keys:
            c = elems[cands[k]]
            results = [reference.compute_f_score((e.objects, e.attributes, e.relations), (c.objects, c.attributes, c.relations))
                       for e in (elems[r] for r in refs[k])]
            theirs[k] = sum(r[0] for r in results) / len(results)
        ref_s = time.perf_counter() - start
    wordnet = WordNet()  # a fresh synonym cache, as a new evaluation has
    start = time.perf_counter()
    pairs = {k: [match_pair(elems[cands[k]], elems[r], wordnet, config) for r in refs[k]] for k in keys}
    hard = {k: sample_scores(pairs[k], config) for k in keys}
    match_s = time.perf_counter() - start
    if reference is not None:
        worst = max(abs(theirs[k] - hard[k]["CAPTURE"]) for k in keys)
        note = f"published compute_f_score: {ref_s:.2f} s ({ref_s / match_s:.2f}× capmill's time), largest difference {worst:.1e}"
    else:
        note = "published CAPTURE not installed (pip install --no-deps capture_metric factualscenegraph): no baseline"
    rows.append(("match + score (exact, synonym)", match_s, note))

    embedder = SentenceTransformersConfig(device="cpu").build()
    embedder.load()
    vectors = PhraseVectors(embedder, batch_size=256)
    wanted = set().union(*(soft_phrases(p) for p in pairs.values()))
    table = vectors.get(wanted)
    rows.append(("soft: embed phrases (MiniLM)", vectors.seconds, f"{len(wanted)} distinct phrases"))
    start = time.perf_counter()
    for k in keys:
        sample_scores(pairs[k], config, table)
    soft_s = time.perf_counter() - start
    rows.append(("soft: cosine pass + scores", soft_s, ""))

    if args.t5_texts:
        rows.append(_t5_batching(texts[: args.t5_texts]))
    n = len(keys)
    print(f"\n{'step':34} {'seconds':>8} {'ms/caption':>11}  notes")
    for label, seconds, notes in rows:
        print(f"{label:34} {seconds:8.2f} {seconds / n * 1e3:11.3f}  {notes}")
    once_parsed = elements_s + match_s + soft_s
    total = parse_s + elements_s + match_s + vectors.seconds + soft_s
    print(f"\nmatching and scoring once parsed (elements + passes + scores, no embedding model): "
          f"{once_parsed / n * 1e3:.2f} ms per caption (target < 5 ms)")
    print(f"total {total / n * 1e3:.2f} ms per caption; parsing {parse_s / total:.0%}, "
          f"embedding {vectors.seconds / total:.0%}, matching and scoring {once_parsed / total:.0%}")


def _t5_batching(texts: list[str]) -> tuple[str, float, str]:
    from pathlib import Path

    from capmill.backends.factual_t5 import FactualT5Config
    from capmill.testing.tiny_models import cached_tiny_models

    folder = cached_tiny_models(Path(__file__).resolve().parent.parent / ".cache" / "tiny_models") / "t5_sg"
    times = {}
    for size in (1, 32):
        parser = FactualT5Config(model=str(folder), device="cpu", batch_size=size, max_output_tokens=32).build()
        parser.load()
        start = time.perf_counter()
        parser.parse(texts)
        times[size] = time.perf_counter() - start
    return (f"T5 parser, tiny model, {len(texts)} texts", times[32],
            f"batches of 32 sentences {times[1] / times[32]:.2f}× faster than one per generate ({times[1]:.1f} s)")


def _reference():
    """The published CAPTURE without its __init__ (which loads all-mpnet-base-v2 onto CUDA), soft
    pass off; None when it is not installed."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from capture_metric.capture import CAPTURE, TextProcessor
    except ImportError:
        return None
    ref = CAPTURE.__new__(CAPTURE)
    ref.alpha, ref.beta, ref.gamma, ref.eps = 0.5, 0.5, 0.2, 1e-6
    ref.synonym_matching, ref.soft_matching = True, False
    ref.stop_words_list, ref.text_processor = set(), TextProcessor()
    return ref


if __name__ == "__main__":
    main()
