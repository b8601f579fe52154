"""CAPTURE: element extraction and filtering, the three matching passes and the score, on
hand-worked graphs; against the published implementation (`capture_metric`, installed with
`--no-deps`) on the same parsed elements, soft pass included; and FACTUAL's SPICE on the same
tuples."""

import contextlib
import io

import numpy as np
import pytest

from capmill.backends.base import GraphEntity, GraphRelation, SceneGraph
from capmill.errors import SetupError
from capmill.eval.capture import (
    CaptureConfig,
    Elements,
    elements,
    match,
    match_pair,
    pair_scores,
    sample_scores,
    similar,
    soft_phrases,
    soft_sums,
    stop_objects,
)


@pytest.fixture(scope="module")
def wordnet():
    from capmill.eval.wordnet import WordNet

    try:
        return WordNet()
    except SetupError as e:
        pytest.skip(str(e))


def test_exact_then_synonym_then_soft(wordnet):
    m = match(["car", "automobile", "dog"], ["car", "auto", "cat"], lambda a, b: similar(a, b, wordnet))
    assert m.hard == 2 and m.matched == ["car", "automobile"]  # exact, then a WordNet synonym
    assert m.rest_candidates == ["dog"] and m.rest_references == ["cat"]
    m.soft_candidate, m.soft_reference = soft_sums(np.array([[0.6]]))
    p, r, f = m.prf()
    assert p == pytest.approx(2.6 / 3) and r == pytest.approx(2.6 / 3) and f == pytest.approx(2.6 / 3, abs=1e-6)


def test_each_reference_element_is_used_once_and_substrings_are_synonyms(wordnet):
    m = match(["dog", "dog"], ["dog"], None)
    assert m.hard == 1 and m.rest_candidates == ["dog"]
    assert similar("tower", "clock tower", wordnet)  # one name inside the other, as the reference
    assert not similar("dog", "cat", wordnet)


def test_soft_sums_take_row_and_column_maxima():
    sim = np.array([[0.9, 0.1, 0.2], [0.3, 0.4, -0.5]])
    assert soft_sums(sim) == pytest.approx((0.9 + 0.4, 0.9 + 0.4 + 0.2))


def test_hand_worked_pair_score():
    cand = Elements(objects=["car", "dog"], attributes={"car": ["red"]}, relations=[("dog", "on", "car")])
    ref = Elements(objects=["car", "truck"], attributes={"car": ["red"], "truck": ["white"]},
                   relations=[("dog", "on", "car")])
    config = CaptureConfig(synonym_matching=False, soft_matching=False)
    s = pair_scores(match_pair(cand, ref, None, config), config)
    assert s["object_F1"] == pytest.approx(0.5, abs=1e-5)
    assert s["attribute_precision"] == pytest.approx(1, abs=1e-5) and s["attribute_recall"] == pytest.approx(0.5, abs=1e-5)
    assert s["attribute_F1"] == pytest.approx(2 / 3, abs=1e-5) and s["relation_F1"] == pytest.approx(1, abs=1e-5)
    assert s["CAPTURE"] == pytest.approx((0.5 * 0.5 + 0.5 * 2 / 3 + 0.2 * 1) / 1.2, abs=1e-5)
    # The sample figure is the mean over its references.
    other = Elements(objects=["car", "dog"], attributes={"car": ["red"]}, relations=[("dog", "on", "car")])
    pairs = [match_pair(cand, r, None, config) for r in (ref, other)]
    assert sample_scores(pairs, config)["CAPTURE"] == pytest.approx((s["CAPTURE"] + 1) / 2, abs=1e-5)


def test_elements_lemmatise_and_drop_stop_objects_and_non_nouns(wordnet):
    graph = SceneGraph(
        entities=[GraphEntity("image"), GraphEntity("cars", ["red", "bigger"]), GraphEntity("clock tower", ["tall"]),
                  GraphEntity("blue", ["light"]), GraphEntity("street", ["full of people"])],
        relations=[GraphRelation(1, "near", 2), GraphRelation(1, "under", 3), GraphRelation(0, "shows", 1)])
    nouns = ["image", "Cars", "clock", "tower", "street"]
    e = elements(graph, nouns, wordnet, stop_objects())
    assert e.objects == ["car", "clock tower", "street"]  # "image" is a stop object, "blue" no noun here
    assert e.attributes == {"car": ["big", "red"], "clock tower": ["tall"]}  # " of" attributes dropped
    # relations need nouns at both ends; stop objects are not filtered out of them (as the reference)
    assert e.relations == [("car", "near", "clock tower"), ("image", "shows", "car")]
    assert "background" in stop_objects() and "dog" not in stop_objects()


def _reference_capture(soft, vectors):
    """The published CAPTURE (`capture_metric`), built without its __init__ (which loads
    all-mpnet-base-v2 onto CUDA) and given an encoder that returns `vectors`."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from capture_metric.capture import CAPTURE, TextProcessor
            from capture_metric.stop_words import stop_words_list
    except ImportError:
        pytest.skip("the published CAPTURE is not installed: pip install --no-deps capture_metric==0.1.13 "
                    "factualscenegraph==0.7.3 (make test does)")

    class Encoder:
        def encode(self, phrases, batch_size=None):
            return np.stack([vectors[p] for p in phrases])

    ref = CAPTURE.__new__(CAPTURE)
    ref.alpha, ref.beta, ref.gamma, ref.eps = 0.5, 0.5, 0.2, 1e-6
    ref.synonym_matching, ref.soft_matching = True, soft
    ref.stop_words_list, ref.text_processor, ref.text_encoder = set(stop_words_list), TextProcessor(), Encoder()
    return ref


CASES = [
    (Elements(["bus", "car", "man", "sky", "tree"], {"car": ["red"], "sky": ["blue", "clear"], "man": ["old"]},
              [("man", "next to", "car"), ("car", "on", "street")]),
     Elements(["automobile", "building", "person", "sky"], {"automobile": ["red"], "sky": ["blue"], "building": ["tall"]},
              [("person", "beside", "automobile"), ("building", "behind", "automobile")])),
    (Elements(["dog", "frisbee", "grass"], {"dog": ["brown", "small"]}, [("dog", "catch", "frisbee")]),
     Elements(["canine", "disc", "lawn", "park"], {"canine": ["brown"], "lawn": ["green"]},
              [("canine", "catch", "disc"), ("canine", "on", "lawn")])),
    (Elements([], {}, []), Elements(["cat"], {"cat": ["black"]}, [])),
]


def _vectors(cases):
    phrases = {p for c, r in cases for e in (c, r)
               for p in (*e.objects, *e.attribute_words(), *(" ".join(t) for t in e.relations))}
    rng = np.random.default_rng(0)
    out = {}
    for p in sorted(phrases):
        v = rng.standard_normal(8)
        out[p] = v / np.linalg.norm(v)
    return out


@pytest.mark.parametrize("soft", [False, True])
def test_equals_the_published_capture_on_the_same_elements(wordnet, soft):
    vectors = _vectors(CASES)
    ref = _reference_capture(soft, vectors)
    config = CaptureConfig(soft_matching=soft)
    for cand, gt in CASES:
        expected = ref.compute_f_score((gt.objects, gt.attributes, gt.relations),
                                       (cand.objects, cand.attributes, cand.relations))
        pairs = [match_pair(cand, gt, wordnet, config)]
        assert soft_phrases(pairs) <= set(vectors)
        ours = sample_scores(pairs, config, vectors if soft else None)
        names = ["CAPTURE", *(f"{t}_{m}" for t in ("object", "attribute", "relation") for m in ("precision", "recall", "F1"))]
        assert [ours[n] for n in names] == pytest.approx(list(expected), abs=1e-9), (cand, gt)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # FACTUAL's own use of importlib.resources
def test_tuple_matching_equals_factual_spice_on_the_same_graphs(wordnet):
    """FACTUAL's SPICE matches all tuples at once (exact, then its own synonym table); with
    synonyms off, its F1 over the tuples equals capmill's exact pass over the same tuples."""
    try:
        from factual_scene_graph.evaluation.spice_evaluation import eval_spice
    except ImportError:
        pytest.skip("FACTUAL's evaluator is not installed: pip install --no-deps factualscenegraph==0.7.3")

    def tuples(e: Elements):
        # SPICE's tuples: objects (relation ends included), (object, attribute), relations
        objects = dict.fromkeys([*e.objects, *(x for s, _, o in e.relations for x in (s, o))])
        out = [(o,) for o in objects]
        out += [(o, a) for o in e.attributes for a in e.attributes[o]]
        return out + list(e.relations)

    def graph_string(e: Elements):
        return " , ".join("( " + " , ".join(t if len(t) != 2 else (t[0], "is", t[1])) + " )" for t in tuples(e))

    for cand, gt in CASES[:2]:
        m = match(tuples(cand), tuples(gt), None)
        p, r = m.hard / len(tuples(cand)), m.hard / len(tuples(gt))
        ours = 2 * p * r / (p + r) if p + r else 0.0
        theirs = eval_spice(graph_string(cand), [graph_string(gt)], merge_tuples_synonyms=False, synonym_match=False)
        assert ours == pytest.approx(theirs, abs=1e-9)


def test_richness_counts_distinct_graph_elements():
    from capmill.eval.graphs import graph_facts

    graph = SceneGraph(entities=[GraphEntity("Dog", ["brown", "small"]), GraphEntity("dog", ["brown"]), GraphEntity("grass"),
                                 GraphEntity("image")],
                       relations=[GraphRelation(0, "on", 2), GraphRelation(1, "on", 2)])
    # objects dog, grass (image is a stop object); (dog, brown), (dog, small); (dog, on, grass)
    assert graph_facts(graph, stop_objects()) == 2 + 2 + 1


class Vectors:
    """Test double of a TextEmbedder: one-hot vectors per distinct phrase (no two phrases alike)."""

    def __init__(self):
        self.seen = {}

    def embed(self, texts):
        for t in texts:
            self.seen.setdefault(t, len(self.seen))
        out = np.zeros((len(texts), 512))
        for i, t in enumerate(texts):
            out[i, self.seen[t] % 512] = 1
        return out


def test_capture_end_to_end_with_the_offline_parser(wordnet):
    from capmill.backends.scene_graph import SpacySceneGraphConfig
    from capmill.eval.graphs import GraphResult, PhraseVectors, SceneGraphs, capture, richness

    parser = SpacySceneGraphConfig().build()
    try:
        parser.load()
    except SetupError as e:
        pytest.skip(str(e))
    ref = "A brown dog sits on the green grass next to a red ball."
    texts = {"same": [ref, None], "wrong": ["A brown cat sits on the green grass next to a red ball.", "A dog."]}
    graphs = SceneGraphs(parser, analyzer=None)
    result = GraphResult()
    capture(["a", "b"], texts, {"a": [ref], "b": []}, graphs, wordnet, PhraseVectors(Vectors()), CaptureConfig(), result)
    same, wrong = result.metrics["same"], result.metrics["wrong"]
    assert same["CAPTURE"] == pytest.approx(1, abs=1e-5) and same["CAPTURE_relation_F1"] == pytest.approx(1, abs=1e-5)
    assert wrong["CAPTURE_object_F1"] == pytest.approx(2 / 3, abs=1e-5) and wrong["CAPTURE"] < same["CAPTURE"]
    detail = result.details["a"]["wrong"]["capture"]
    assert "cat" in detail["found"] and "cat" not in detail["matched"] and "red ball" in detail["matched"]
    assert "b" not in result.details  # no reference: left out
    richness(["a", "b"], texts, graphs, result)
    assert result.metrics["same"]["facts_per_caption"] == 3 + 3 + 2  # dog, grass, ball; 3 attributes; 2 relations
    assert graphs.parse_s > 0
