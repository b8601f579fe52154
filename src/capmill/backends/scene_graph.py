"""Scene graphs from spaCy's dependency parse (`type: spacy_scene_graph`): capmill's offline
SceneGraphParser, the default of CAPTURE and of the richness count in `capmill eval`.

    parser: {type: spacy_scene_graph}                  # en_core_web_sm, offline
    parser: {type: factual_t5, model: PATH}            # the T5 parser CAPTURE publishes with

CAPTURE (Dong et al., "Benchmarking and Improving Detail Image Caption", 2024) parses captions
with the FACTUAL T5 model (`lizhuang144/flan-t5-base-VG-factual-sg`, `capmill.backends.factual_t5`),
which cannot be fetched everywhere. This parser reads the same three kinds of element off a
dependency parse with a fixed rule set, so CAPTURE runs offline; its graphs differ from the T5's
and so do the scores (the README says by how much to expect). The published rule-based parser on
spaCy (`scenegraphparser`, MIT) parses one sentence per call (no `nlp.pipe`) and has no rule for
predicate adjectives ("the car is red") or for relations through a passive or a copula ("a car
parked in front of a building"), so capmill has its own rules:

- objects: every noun that heads a noun phrase, named with its compound nouns ("clock tower");
  pronouns are no objects; "front", "top", "middle", … inside "in front of"-like phrases are
  part of the relation, not objects;
- attributes: adjectival modifiers and their conjuncts ("red and white"), predicate adjectives
  ("the sky is clear and blue"), and intransitive verbs of a subject ("a man smiling");
  number modifiers become the object's quantity;
- relations: subject–verb–object (verb lemma: "hold"), prepositions after a noun ("a man with a
  hat"), after a verb ("sitting on" → "sit on"; after a copula or a verb with an object only the
  preposition: "on"), after "next"/"close" ("next to"), through a noun of place ("in front of",
  "on top of"), possessives ("the man's hat" → man, have, hat), passive agents ("the street is
  surrounded by trees" → trees, surround, street). Subjects are found through
  `nsubj`/`nsubjpass`, a participle or relative clause's noun, a shared subject of conjoined
  verbs and "there is" sentences; conjoined subjects and objects each get the relation.

`nouns` of each graph are the text's tokens tagged NN* (what CAPTURE's noun filter reads). Texts
go through `nlp.pipe` in batches.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from capmill.backends.base import GraphEntity, GraphRelation, SceneGraph
from capmill.backends.spacy_text import DEFAULT, load_pipeline
from capmill.components import BackendConfig
from capmill.errors import SetupError

_NOUN = frozenset({"NOUN", "PROPN"})
# Nouns that name a place relative to another object: inside "in front of X" they belong to the
# relation, not to the scene.
PLACE_NOUNS = frozenset({"front", "top", "middle", "side", "back", "edge", "center", "centre", "corner", "left",
                         "right", "bottom", "rear", "base", "end", "foot", "head", "surface"})
# Adjectives and adverbs that make a relation with the preposition after them ("next to").
RELATION_HEADS = frozenset({"next", "close", "adjacent", "near", "opposite", "due", "prior", "out", "ahead"})
_SUBJECT = ("nsubj", "nsubjpass")
_COPULAS = frozenset({"be", "look", "seem", "appear", "become", "remain", "stay", "feel"})


class SpacySceneGraphConfig(BackendConfig):
    type: Literal["spacy_scene_graph"] = "spacy_scene_graph"
    # An installed spaCy pipeline with a tagger and a dependency parser; the default is found offline.
    model: str = DEFAULT
    batch_size: int = Field(64, ge=1)

    def build(self) -> SpacySceneGraphParser:
        return SpacySceneGraphParser(self)

    def model_ids(self) -> list[str]:
        return [f"spacy:{self.model}"]


class SpacySceneGraphParser:
    """Implements SceneGraphParser with the rules of the module docstring."""

    def __init__(self, config: SpacySceneGraphConfig):
        self.config = config
        self.model_id = f"spacy_scene_graph:{config.model}"
        self.nlp: Any = None

    def load(self) -> None:
        if self.nlp is not None:
            return
        self.nlp, pipeline = load_pipeline(self.config.model, ["ner"], "spacy_scene_graph")
        if not self.nlp.has_pipe("parser"):
            raise SetupError(f"spaCy pipeline {self.config.model!r} has no dependency parser; scene graphs need one")
        self.model_id = f"spacy_scene_graph:{pipeline}"

    def close(self) -> None:
        self.nlp = None

    def parse(self, texts: list[str]) -> list[SceneGraph]:
        if self.nlp is None:
            raise SetupError("the spacy_scene_graph parser is not loaded: call load() first")
        return [graph_of(doc) for doc in self.nlp.pipe(texts, batch_size=self.config.batch_size)]


def _conjuncts(token: Any) -> list[Any]:
    """`token` and the tokens conjoined to it ("a man and a woman", "red and white")."""
    out, todo = [], [token]
    while todo:
        t = todo.pop(0)
        out.append(t)
        todo.extend(c for c in t.children if c.dep_ == "conj")
    return out


def _is_place_noun(token: Any) -> bool:
    """ "front" in "in front of X": a place noun after a preposition, with "of" + object after it."""
    return (token.lower_ in PLACE_NOUNS and token.dep_ == "pobj"
            and any(c.dep_ == "prep" and c.lower_ == "of" and any(g.dep_ == "pobj" for g in c.children)
                    for c in token.children))


class _Builder:
    def __init__(self, doc: Any):
        self.doc = doc
        self.entities: list[GraphEntity] = []
        self.index: dict[int, int] = {}
        self.relations: list[GraphRelation] = []
        self.seen: set[tuple[int, str, int]] = set()

    def entity(self, token: Any) -> int | None:
        """The entity a noun token heads (a compound resolves to its head), created on first use."""
        while token.dep_ == "compound" and token.head.pos_ in _NOUN and token.head.i != token.i:
            token = token.head
        if token.pos_ not in _NOUN or _is_place_noun(token):
            return None
        if token.i in self.index:
            return self.index[token.i]
        words = [c.lower_ for c in token.lefts if c.dep_ == "compound" and c.pos_ in _NOUN | {"ADJ", "NUM", "X"}]
        entity = GraphEntity(head=" ".join([*words, token.lower_]))
        for child in token.children:
            if child.dep_ == "amod":
                self.add_attributes(entity, child)
            elif child.dep_ == "nummod" and not entity.quantity:
                entity.quantity = child.lower_
        self.index[token.i] = len(self.entities)
        self.entities.append(entity)
        return self.index[token.i]

    @staticmethod
    def add_attributes(entity: GraphEntity, word: Any) -> None:
        for w in _conjuncts(word):
            if w.pos_ in ("ADJ", "VERB", "NOUN") and w.lower_ not in entity.attributes:
                entity.attributes.append(w.lower_)

    def relate(self, subjects: list[int], relation: str, objects: list[int]) -> None:
        for s in subjects:
            for o in objects:
                if s != o and (s, relation, o) not in self.seen:
                    self.seen.add((s, relation, o))
                    self.relations.append(GraphRelation(s, relation, o))

    def nouns(self, token: Any) -> list[int]:
        """Entities of `token` and its conjuncts."""
        found = [self.entity(t) for t in _conjuncts(token)]
        return [e for e in found if e is not None]

    def subjects(self, verb: Any, depth: int = 0) -> list[int]:
        """Who does what `verb` says (see the module docstring)."""
        if depth > 4:
            return []
        own = [c for c in verb.children if c.dep_ in _SUBJECT]
        if verb.dep_ == "relcl" and verb.head.pos_ in _NOUN and (not own or own[0].pos_ == "PRON"):
            return self.nouns(verb.head)
        if own and own[0].pos_ in _NOUN:
            return self.nouns(own[0])
        if any(c.dep_ == "expl" for c in verb.children):  # "there is a dog on the grass"
            attrs = [c for c in verb.children if c.dep_ == "attr"]
            return self.nouns(attrs[0]) if attrs else []
        if verb.dep_ == "acl" and verb.head.pos_ in _NOUN:
            return self.nouns(verb.head)
        if not own and verb.dep_ in ("conj", "advcl", "xcomp") and verb.head.i != verb.i:
            return self.subjects(verb.head, depth + 1)
        return []

    def owner(self, head: Any) -> tuple[list[int], bool]:
        """The subjects a preposition attached to `head` relates, and whether `head` is a verb."""
        if head.pos_ in _NOUN:
            entity = self.entity(head)
            return ([entity] if entity is not None else []), False
        if head.pos_ in ("VERB", "AUX"):
            return self.subjects(head), True
        return [], False


def graph_of(doc: Any) -> SceneGraph:
    """The scene graph of one spaCy Doc (the rules of the module docstring)."""
    b = _Builder(doc)
    for token in doc:
        if token.pos_ in _NOUN and token.dep_ != "compound":
            b.entity(token)
    for token in doc:
        dep = token.dep_
        if dep == "acomp" and token.pos_ == "ADJ" and token.head.lemma_ in _COPULAS:
            for s in b.subjects(token.head):
                b.add_attributes(b.entities[s], token)
        elif dep in ("dobj", "attr") and token.pos_ in _NOUN and token.head.pos_ == "VERB" and token.head.lemma_ != "be":
            b.relate(b.subjects(token.head), token.head.lemma_.lower(), b.nouns(token))
        elif dep == "poss" and token.pos_ in _NOUN and token.head.pos_ in _NOUN:
            b.relate(b.nouns(token), "have", b.nouns(token.head))
        elif dep == "pobj" and token.pos_ in _NOUN and token.head.dep_ == "prep":
            _preposition(b, token.head, token)
        elif dep == "pobj" and token.pos_ in _NOUN and token.head.dep_ == "agent":
            # "the street is surrounded by trees": trees surround the street
            verb = token.head.head
            patients = [c for c in verb.children if c.dep_ == "nsubjpass"]
            if patients:
                b.relate(b.nouns(token), verb.lemma_.lower(), b.nouns(patients[0]))
        elif token.pos_ == "VERB" and dep != "amod" and _intransitive(token):
            for s in b.subjects(token):
                if token.lower_ not in b.entities[s].attributes:
                    b.entities[s].attributes.append(token.lower_)
    nouns = [t.text for t in doc if t.tag_.startswith("NN")]
    return SceneGraph(entities=b.entities, relations=b.relations, nouns=nouns)


def _intransitive(verb: Any) -> bool:
    return not any(c.dep_ in ("dobj", "attr", "prep", "agent", "xcomp", "ccomp", "dative", "oprd", "acomp")
                   for c in verb.children)


def _preposition(b: _Builder, prep: Any, obj: Any) -> None:
    objects = b.nouns(obj)
    if not objects:
        return
    head = prep.head
    if head.pos_ in _NOUN and _is_place_noun(head) and head.head.dep_ == "prep":
        # "in front of X": the relation is the whole phrase, its subject what "in" attaches to.
        outer = head.head
        subjects, _ = b.owner(outer.head)
        b.relate(subjects, f"{outer.lower_} {head.lower_} {prep.lower_}", objects)
        return
    if head.pos_ in ("ADJ", "ADV") and head.lower_ in RELATION_HEADS:
        subjects, _ = b.owner(head.head)
        b.relate(subjects, f"{head.lower_} {prep.lower_}", objects)
        return
    subjects, verb = b.owner(head)
    if verb and head.pos_ == "VERB" and head.lemma_ not in _COPULAS and not any(c.dep_ == "dobj" for c in head.children):
        b.relate(subjects, f"{head.lemma_.lower()} {prep.lower_}", objects)
    else:
        b.relate(subjects, prep.lower_, objects)
