"""The scene-graph metrics of `capmill eval`: CAPTURE (against references) and richness (facts per
caption, no reference), sharing one parse of every text.

Richness is the Revisit paper's measure ("Revisit Large-Scale Image-Caption Data in Pre-training
Multimodal Foundation Models", ICLR 2025: the average number of assertions per caption), counted
here on the scene graph: the distinct objects (stop objects left out), (object, attribute) pairs
and (subject, relation, object) triples of a caption's graph, names lower-cased. The paper counts
assertions an LLM lists; a graph's elements are the parser's reading of the same thing, so the
figure depends on the parser as CAPTURE does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from capmill.eval.capture import (
    TYPES,
    CaptureConfig,
    Elements,
    elements,
    match_pair,
    phrase,
    sample_scores,
    soft_phrases,
    stop_objects,
)

if TYPE_CHECKING:
    from capmill.backends.base import SceneGraph


def graph_facts(graph: SceneGraph, stop: frozenset[str] = frozenset()) -> int:
    """The richness count of one graph (see the module docstring)."""
    heads = [e.head.lower() for e in graph.entities]
    objects = {h for h in heads if h not in stop}
    attributes = {(h, a.lower()) for h, e in zip(heads, graph.entities, strict=True) for a in e.attributes}
    relations = {(heads[r.subject], r.relation.lower(), heads[r.object]) for r in graph.relations}
    return len(objects) + len(attributes) + len(relations)


class SceneGraphs:
    """Scene graphs (and noun tokens) of texts, each text parsed once per evaluation, in batches.
    `parse_s` / `tag_s` add up the time spent in the parser and in the part-of-speech tagger."""

    def __init__(self, parser: Any, analyzer: Any = None, batch_size: int = 256):
        self.parser = parser
        self.analyzer = analyzer  # a TextAnalyzer, or a callable building one, for parsers without nouns
        self.batch_size = batch_size
        self._graphs: dict[str, SceneGraph] = {}
        self._nouns: dict[str, list[str]] = {}
        self.parse_s = 0.0
        self.tag_s = 0.0

    def graphs(self, texts: list[str]) -> list[SceneGraph]:
        todo = list(dict.fromkeys(t for t in texts if t not in self._graphs))
        start = time.perf_counter()
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i:i + self.batch_size]
            for text, graph in zip(chunk, self.parser.parse(chunk), strict=True):
                self._graphs[text] = graph
        self.parse_s += time.perf_counter() - start
        return [self._graphs[t] for t in texts]

    def nouns(self, texts: list[str]) -> list[list[str]]:
        graphs = self.graphs(texts)
        todo = list(dict.fromkeys(t for t, g in zip(texts, graphs, strict=True) if g.nouns is None and t not in self._nouns))
        if todo:
            start = time.perf_counter()
            if callable(self.analyzer) and not hasattr(self.analyzer, "analyze"):
                self.analyzer = self.analyzer()
            for text, analysis in zip(todo, self.analyzer.analyze(todo), strict=True):
                self._nouns[text] = [w.text for w in analysis.words if w.pos in ("NOUN", "PROPN")]
            self.tag_s += time.perf_counter() - start
        return [g.nouns if g.nouns is not None else self._nouns[t] for t, g in zip(texts, graphs, strict=True)]


@dataclass
class GraphResult:
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    details: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # key → field → {...}
    timings: dict[str, float] = field(default_factory=dict)


def richness(keys: list[str], texts: dict[str, list[str | None]], graphs: SceneGraphs, result: GraphResult) -> None:
    stop = stop_objects()
    for name, column in texts.items():
        rows = [(k, t) for k, t in zip(keys, column, strict=True) if t is not None]
        if not rows:
            continue
        parsed = graphs.graphs([t for _, t in rows])
        failed = sum(g.error is not None for g in parsed)
        counts = [graph_facts(g, stop) for g in parsed if g.error is None]
        if failed:
            result.notes.append(f"{name}: the scene-graph parser failed on {failed} captions (left out of facts_per_caption)")
        result.metrics.setdefault(name, {})["facts_per_caption"] = sum(counts) / len(counts) if counts else float("nan")


class PhraseVectors:
    """Unit vectors of phrases from a TextEmbedder, each phrase embedded once."""

    def __init__(self, embedder: Any, batch_size: int = 256):
        self.embedder = embedder
        self.batch_size = batch_size
        self.vectors: dict[str, Any] = {}
        self.seconds = 0.0

    def get(self, phrases: set[str]) -> dict[str, Any]:
        import numpy as np

        from capmill.metrics.embedding import unit_rows

        todo = sorted(p for p in phrases if p not in self.vectors)
        start = time.perf_counter()
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i:i + self.batch_size]
            for p, v in zip(chunk, unit_rows(np.asarray(self.embedder.embed(chunk))), strict=True):
                self.vectors[p] = v
        self.seconds += time.perf_counter() - start
        return self.vectors


def found_and_matched(cand: Elements, pairs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """A sample's elements as phrases ("car", "red car", "dog on grass"), and those matched exactly
    or as synonyms against at least one reference."""
    hits = {t: {phrase(e) for m in pairs for e in m[t].matched} for t in TYPES}
    found = ([(o, o in hits["object"]) for o in cand.objects]
             + [(f"{a} {o}", a in hits["attribute"]) for o in cand.attributes for a in cand.attributes[o]]
             + [(phrase(r), phrase(r) in hits["relation"]) for r in cand.relations])
    return {"found": [f for f, _ in found], "matched": [f for f, hit in found if hit]}


def capture(keys: list[str], texts: dict[str, list[str | None]], references: dict[str, list[str]], graphs: SceneGraphs,
            wordnet: Any, vectors: PhraseVectors | None, config: CaptureConfig, result: GraphResult) -> None:
    """CAPTURE of every field against the references (module docstring of capmill.eval.capture)."""
    stop = stop_objects() if config.stop_objects else frozenset()
    scored = [k for k in keys if references.get(k)]
    ref_texts = [r for k in scored for r in references[k]]
    ref_graphs = graphs.graphs(ref_texts)
    ref_nouns = graphs.nouns(ref_texts)
    match_s = 0.0
    start = time.perf_counter()
    ref_elements: dict[str, list[Elements]] = {}
    at = 0
    for k in scored:
        n = len(references[k])
        ref_elements[k] = [elements(g, nn, wordnet, stop) for g, nn in zip(ref_graphs[at:at + n], ref_nouns[at:at + n], strict=True)]
        at += n
    match_s += time.perf_counter() - start
    for name, column in texts.items():
        rows = [(k, t) for k, t in zip(keys, column, strict=True) if t is not None and k in ref_elements]
        if not rows:
            continue
        cand_graphs = graphs.graphs([t for _, t in rows])
        cand_nouns = graphs.nouns([t for _, t in rows])
        start = time.perf_counter()
        per_sample, skipped = [], 0
        for (key, _), graph, nouns in zip(rows, cand_graphs, cand_nouns, strict=True):
            if graph.error is not None:
                skipped += 1
                continue
            cand = elements(graph, nouns, wordnet, stop)
            per_sample.append((key, cand, [match_pair(cand, ref, wordnet, config) for ref in ref_elements[key]]))
        match_s += time.perf_counter() - start
        table = None
        if vectors is not None and config.soft_matching:
            table = vectors.get(set().union(*(soft_phrases(pairs) for _, _, pairs in per_sample)))
        start = time.perf_counter()
        scores = []
        for key, cand, pairs in per_sample:
            s = sample_scores(pairs, config, table)
            scores.append(s)
            result.details.setdefault(key, {}).setdefault(name, {})["capture"] = {"score": round(s["CAPTURE"], 4),
                                                                                  **found_and_matched(cand, pairs)}
        match_s += time.perf_counter() - start
        if skipped:
            result.notes.append(f"{name}: the scene-graph parser failed on {skipped} captions (left out of CAPTURE)")
        metrics = result.metrics.setdefault(name, {})
        if scores:
            metrics["CAPTURE"] = sum(s["CAPTURE"] for s in scores) / len(scores)
            for t in TYPES:
                metrics[f"CAPTURE_{t}_F1"] = sum(s[f"{t}_F1"] for s in scores) / len(scores)
    result.timings["capture_match"] = result.timings.get("capture_match", 0.0) + match_s
