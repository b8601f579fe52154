"""The evaluation backends: capmill's spaCy scene-graph rules on sentences worked by hand, the
FACTUAL output format, and the tiny T5 parser, NLI model and diffusers pipeline through their real
loading code."""

import numpy as np
import pytest

from capmill.backends.base import EntailmentModel, ImageRequest, SceneGraphParser, TextToImage
from capmill.backends.factual_t5 import FactualT5Config, merge_graphs, parse_graph_text
from capmill.backends.nli import NliConfig, label_columns
from capmill.backends.scene_graph import SpacySceneGraphConfig
from capmill.errors import SetupError


@pytest.fixture(scope="module")
def spacy_parser():
    parser = SpacySceneGraphConfig().build()
    try:
        parser.load()
    except SetupError as e:
        pytest.skip(str(e))
    return parser


def view(graph):
    return ({e.head: sorted(e.attributes) for e in graph.entities}, sorted(graph.triples()))


@pytest.mark.parametrize("text,entities,triples", [
    ("A red car and a white truck are parked in front of a tall building.",
     {"car": ["red"], "truck": ["white"], "building": ["tall"]},
     [("car", "in front of", "building"), ("truck", "in front of", "building")]),
    ("The car is red and the sky is clear and blue.", {"car": ["red"], "sky": ["blue", "clear"]}, []),
    ("A man wearing a black hat is sitting on a wooden bench next to a small dog.",
     {"man": [], "hat": ["black"], "bench": ["wooden"], "dog": ["small"]},
     [("man", "next to", "dog"), ("man", "sit on", "bench"), ("man", "wear", "hat")]),
    ("There is a cat on the table.", {"cat": [], "table": []}, [("cat", "on", "table")]),
    ("The street is surrounded by green trees.", {"street": [], "trees": ["green"]}, [("trees", "surround", "street")]),
    ("A clock tower stands by the man's bicycle.", {"clock tower": [], "man": [], "bicycle": []},
     [("clock tower", "stand by", "bicycle"), ("man", "have", "bicycle")]),
])
def test_spacy_rules(spacy_parser, text, entities, triples):
    graph = spacy_parser.parse([text])[0]
    assert view(graph) == (entities, triples)
    assert graph.nouns is not None and set(graph.nouns) >= {e.split()[-1] for e in entities}


def test_spacy_parser_batches_and_plays_the_protocol(spacy_parser):
    assert isinstance(spacy_parser, SceneGraphParser)
    graphs = spacy_parser.parse(["Two dogs run.", "", "It is sunny."])
    assert [len(g.entities) for g in graphs] == [1, 0, 0]  # pronouns are no objects
    assert graphs[0].entities[0].quantity == "two" and graphs[0].entities[0].attributes == ["run"]


def test_factual_output_format():
    graph = parse_graph_text("( car , is , red ) , ( car , is , 2 ) , ( Car , on , road ) , ( tree ) , ( broken , x ) , ( car , is")
    assert view(graph) == ({"car": ["red"], "road": [], "tree": []}, [("car", "on", "road")])
    assert graph.entities[0].quantity == "2"
    merged = merge_graphs([graph, parse_graph_text("( car , is , shiny ) , ( dog , near , car )")])
    assert view(merged) == ({"car": ["red", "shiny"], "road": [], "tree": [], "dog": []},
                            [("car", "on", "road"), ("dog", "near", "car")])


def test_tiny_t5_parser_runs_batched(tiny_models):
    parser = FactualT5Config(model=str(tiny_models / "t5_sg"), device="cpu", num_beams=2, max_output_tokens=12,
                             batch_size=2).build()
    parser.load()
    assert isinstance(parser, SceneGraphParser)
    graphs = parser.parse(["A red car. A dog on grass!", "One sentence only", ""])
    assert len(graphs) == 3 and all(g.error is None and g.nouns is None for g in graphs)


def test_nli_labels_and_tiny_model(tiny_models):
    assert label_columns({0: "CONTRADICTION", 1: "neutral", 2: "Entailment"}) == {"contradiction": 0, "neutral": 1,
                                                                                  "entailment": 2}
    with pytest.raises(SetupError, match="do not name contradiction"):
        label_columns({0: "entailment", 1: "neutral"})
    model = NliConfig(model=str(tiny_models / "nli"), device="cpu", batch_size=2).build()
    model.load()
    assert isinstance(model, EntailmentModel)
    out = model.entail([("A dog runs on the grass.", "A dog is outside."), ("x", "y"), ("premise " * 400, "long")])
    assert len(out) == 3 and all(e.error is None for e in out)
    for e in out:
        assert e.entailment + e.neutral + e.contradiction == pytest.approx(1, abs=1e-5)
        assert e.label in ("entailment", "neutral", "contradiction")


@pytest.mark.slow
def test_tiny_diffusers_pipeline_is_seeded(tiny_models):
    pytest.importorskip("diffusers")
    from capmill.backends.diffusers_t2i import DiffusersConfig

    t2i = DiffusersConfig(model=str(tiny_models / "tiny_sd"), device="cpu", steps=2, batch_size=2).build()
    t2i.load()
    assert isinstance(t2i, TextToImage)
    made = t2i.generate_images([ImageRequest("a dog", seed=1), ImageRequest("a cat", seed=1), ImageRequest("a dog", seed=1)])
    assert all(m.ok for m in made)
    pixels = [np.asarray(m.image) for m in made]
    assert np.array_equal(pixels[0], pixels[2]) and not np.array_equal(pixels[0], pixels[1])  # per request, not per batch


def test_the_fake_plays_the_evaluation_roles():
    from capmill.backends.fake import FakeBackendConfig

    fake = FakeBackendConfig(no_if=["purple"]).build()
    assert all(isinstance(fake, p) for p in (SceneGraphParser, EntailmentModel, TextToImage))
    graph = fake.parse(["A dog and a ball on the grass."])[0]
    assert [e.head for e in graph.entities] == ["dog", "ball", "grass"] and graph.relations == []
    labels = [e.label for e in fake.entail([("A dog on grass.", "a dog"), ("A dog.", "a cat"), ("A dog.", "a purple dog")])]
    assert labels == ["entailment", "neutral", "contradiction"]
    one, two, three = fake.generate_images([ImageRequest("a"), ImageRequest("a"), ImageRequest("a", seed=1)])
    assert one.image.tobytes() == two.image.tobytes() != three.image.tobytes()
