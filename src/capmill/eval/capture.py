"""CAPTURE: how many of a detail caption's objects, attributes and relations the references share.

Dong et al., "Benchmarking and Improving Detail Image Caption" (2024); reference implementation
foundation-multimodal-models/CAPTURE `capture/capture_metric/capture.py`. Per sample and per
reference caption:

1. both texts become scene graphs (a `SceneGraphParser` backend), merged into a set of objects
   (heads lemmatised as WordNet nouns), attribute words per object (lemmatised as adjectives;
   attributes containing " of" dropped) and (subject, relation, object) triples;
2. objects on the stop list (`capmill/data/capture_stop_objects.txt`, CAPTURE's list) are
   dropped, and so are objects, attributes of objects, and relations whose subject or object are
   not nouns of the text (every word of a multi-word name must be a noun of it);
3. each element type is matched in three passes: exact; synonyms (one name inside the other, or
   a shared WordNet lemma — for relations, all three parts); soft: the cosine matrix of the
   remaining candidate and reference phrases (a `TextEmbedder`), whose row maxima add to the
   candidate's matches and column maxima to the reference's;
4. precision = candidate matches / candidates, recall = reference matches / references, F1 per
   type (ε = 1e-6 in every denominator, as the reference), and
   CAPTURE = (α·F1_object + β·F1_attribute + γ·F1_relation) / (α + β + γ), α = β = 0.5, γ = 0.2.

A sample's figures are the mean over its references; the corpus figure the mean over samples.
Attribute words are matched without their object, as the reference does ("red car" matches
"red apple" on "red").

Differences from the reference, all in the inputs rather than the arithmetic: the parser is a
backend (the reference always uses the FACTUAL T5; capmill's offline default parses with spaCy
rules, and scores depend on the parser); the text's nouns come from the parser's (or a
`TextAnalyzer`'s) part-of-speech tags rather than NLTK's tagger, and are lower-cased before
lemmatising; sets are matched in sorted order (the reference iterates Python sets, so its greedy
matching can change between runs); the soft pass embeds with any TextEmbedder (the reference:
all-mpnet-base-v2; capmill's default is the bundled all-MiniLM-L6-v2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from pydantic import Field

from capmill.components import Strict

if TYPE_CHECKING:
    import numpy as np

    from capmill.backends.base import SceneGraph
    from capmill.eval.wordnet import WordNet

EPS = 1e-6
TYPES = ("object", "attribute", "relation")


class CaptureConfig(Strict):
    # Weights of the object, attribute and relation F1 (the reference's α, β, γ; α + β = 1).
    alpha: float = Field(0.5, ge=0)
    beta: float = Field(0.5, ge=0)
    gamma: float = Field(0.2, ge=0)
    synonym_matching: bool = True
    soft_matching: bool = True
    stop_objects: bool = True


@cache
def stop_objects() -> frozenset[str]:
    text = (resources.files("capmill.data") / "capture_stop_objects.txt").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


@dataclass
class Elements:
    """What CAPTURE compares of one text: objects, attributes per object, relation triples."""

    objects: list[str] = field(default_factory=list)
    attributes: dict[str, list[str]] = field(default_factory=dict)
    relations: list[tuple[str, str, str]] = field(default_factory=list)

    def attribute_words(self) -> list[str]:
        return [a for obj in self.attributes for a in self.attributes[obj]]

    def count(self) -> int:
        return len(self.objects) + len(self.attribute_words()) + len(self.relations)


def elements(graph: SceneGraph, nouns: Sequence[str], wordnet: WordNet, stop: frozenset[str] = frozenset()) -> Elements:
    """Steps 1 and 2 of the module docstring for one text's graph; `nouns` are its noun tokens."""
    noun_lemmas = {wordnet.noun(n.lower()) for n in nouns}

    def grounded(name: str) -> bool:
        return name in noun_lemmas or all(piece in noun_lemmas for piece in name.split(" "))

    objects: set[str] = set()
    attributes: dict[str, set[str]] = {}
    heads = [wordnet.noun(e.head.lower()) for e in graph.entities]
    for entity, head in zip(graph.entities, heads, strict=True):
        objects.add(head)
        for attribute in entity.attributes:
            word = wordnet.adjective(attribute.lower())
            if " of" not in word:
                attributes.setdefault(head, set()).add(word)
    relations = {(heads[r.subject], r.relation.lower(), heads[r.object]) for r in graph.relations}
    return Elements(
        objects=sorted(o for o in objects if o not in stop and grounded(o)),
        attributes={o: sorted(attributes[o]) for o in sorted(attributes) if grounded(o)},
        relations=sorted(r for r in relations if grounded(r[0]) and grounded(r[2])),
    )


def similar(a: str, b: str, wordnet: WordNet) -> bool:
    """The reference's synonym test: one name inside the other, or a WordNet lemma in common."""
    if a in b or b in a:
        return True
    return bool(wordnet.synonyms("_".join(a.split())) & wordnet.synonyms("_".join(b.split())))


@dataclass
class TypeMatch:
    """One element type of one (candidate, reference) pair, after the exact and synonym passes;
    `soft_candidate` / `soft_reference` are added by the soft pass."""

    candidates: int
    references: int
    hard: int
    matched: list[Any] = field(default_factory=list)  # candidate elements matched exactly or as synonyms
    rest_candidates: list[Any] = field(default_factory=list)
    rest_references: list[Any] = field(default_factory=list)
    soft_candidate: float = 0.0
    soft_reference: float = 0.0

    def prf(self) -> tuple[float, float, float]:
        p = (self.hard + self.soft_candidate) / (self.candidates + EPS)
        r = (self.hard + self.soft_reference) / (self.references + EPS)
        return p, r, 2 * p * r / (p + r + EPS)


def match(candidates: Sequence[Any], references: Sequence[Any], same: Callable[[Any, Any], bool] | None) -> TypeMatch:
    """Exact, then (when `same` is given) synonym matching; each reference element is used once,
    candidates in order take the first free reference that matches."""
    used_c: set[int] = set()
    used_r: set[int] = set()
    for i, c in enumerate(candidates):
        for j, r in enumerate(references):
            if j not in used_r and c == r:
                used_c.add(i)
                used_r.add(j)
                break
    if same is not None:
        for i, c in enumerate(candidates):
            if i in used_c:
                continue
            for j, r in enumerate(references):
                if j not in used_r and same(c, r):
                    used_c.add(i)
                    used_r.add(j)
                    break
    return TypeMatch(candidates=len(candidates), references=len(references), hard=len(used_c),
                     matched=[c for i, c in enumerate(candidates) if i in used_c],
                     rest_candidates=[c for i, c in enumerate(candidates) if i not in used_c],
                     rest_references=[r for j, r in enumerate(references) if j not in used_r])


def soft_sums(similarity: np.ndarray) -> tuple[float, float]:
    """(sum of row maxima, sum of column maxima) of a candidate × reference cosine matrix."""
    if similarity.size == 0:
        return 0.0, 0.0
    return float(similarity.max(axis=1).sum()), float(similarity.max(axis=0).sum())


def phrase(element: Any) -> str:
    return " ".join(element) if isinstance(element, tuple) else element


def match_pair(candidate: Elements, reference: Elements, wordnet: WordNet | None, config: CaptureConfig) -> dict[str, TypeMatch]:
    """The exact and synonym passes of every type for one (candidate, reference) pair."""
    same = (lambda a, b: similar(a, b, wordnet)) if config.synonym_matching and wordnet is not None else None
    same_triple = (lambda a, b: all(similar(x, y, wordnet) for x, y in zip(a, b, strict=True))) if same else None
    return {
        "object": match(candidate.objects, reference.objects, same),
        "attribute": match(candidate.attribute_words(), reference.attribute_words(), same),
        "relation": match(candidate.relations, reference.relations, same_triple),
    }


def soft_pass(matches: dict[str, TypeMatch], vectors: dict[str, np.ndarray]) -> None:
    """Add the soft matches from unit phrase vectors (`phrase(element)` → vector)."""
    import numpy as np

    for m in matches.values():
        if m.rest_candidates and m.rest_references:
            c = np.stack([vectors[phrase(e)] for e in m.rest_candidates])
            r = np.stack([vectors[phrase(e)] for e in m.rest_references])
            m.soft_candidate, m.soft_reference = soft_sums(c @ r.T)


def pair_scores(matches: dict[str, TypeMatch], config: CaptureConfig) -> dict[str, float]:
    """CAPTURE and P/R/F1 per type of one (candidate, reference) pair."""
    out: dict[str, float] = {}
    for t in TYPES:
        p, r, f = matches[t].prf()
        out.update({f"{t}_precision": p, f"{t}_recall": r, f"{t}_F1": f})
    weights = config.alpha + config.beta + config.gamma
    out["CAPTURE"] = (config.alpha * out["object_F1"] + config.beta * out["attribute_F1"]
                      + config.gamma * out["relation_F1"]) / weights
    return out


def soft_phrases(pairs: list[dict[str, TypeMatch]]) -> set[str]:
    """The phrases the soft pass of these pairs needs vectors for."""
    return {phrase(e) for m in pairs for tm in m.values() if tm.rest_candidates and tm.rest_references
            for e in (*tm.rest_candidates, *tm.rest_references)}


def sample_scores(pairs: list[dict[str, TypeMatch]], config: CaptureConfig,
                  vectors: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """One sample from its (candidate, reference) pairs after the hard passes: the soft pass
    (with unit `vectors` of `soft_phrases(pairs)`; None: no soft pass), then the mean over
    references of `pair_scores`."""
    if vectors is not None and config.soft_matching:
        for m in pairs:
            soft_pass(m, vectors)
    scores = [pair_scores(m, config) for m in pairs]
    return {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}
