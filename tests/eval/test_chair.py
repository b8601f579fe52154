"""CHAIR: the synonym table and the reference's word rules, CHAIR-i / CHAIR-s worked by hand, and
COCO instances files (good and bad)."""

import json

import pytest

from capmill.errors import ConfigError
from capmill.eval.chair import chair, load_instances, mentions, vocabulary


def test_the_table_maps_the_80_categories_and_their_synonyms():
    vocab = vocabulary()
    categories = set(vocab.node.values())
    assert len(categories) == 80 and {"person", "dining table", "tv", "hair drier", "skis"} <= categories
    assert vocab.node["puppy"] == "dog" and vocab.node["motor bike"] == "motorcycle" and vocab.node["sofa"] == "couch"


@pytest.mark.parametrize("caption,expected", [
    ("Two men ride motor bikes past a fire hydrant.", [("man", "person"), ("motor bike", "motorcycle"),
                                                       ("fire hydrant", "fire hydrant")]),
    ("Three hot dogs and wine glasses on a dining table.", [("hot dog", "hot dog"), ("wine glass", "wine glass"),
                                                            ("dining table", "dining table")]),
    # qualifiers do not fire person; compounds that are no COCO object do not fire their parts
    ("A baby elephant and a passenger train on the train tracks.", [("elephant", "elephant"), ("train", "train")]),
    ("A man in a bow tie at home plate.", [("man", "person"), ("tie", "tie")]),
    # "seat" is a chair, except in a caption about a toilet
    ("A seat by the window.", [("seat", "chair")]),
    ("A toilet seat is up.", [("toilet", "toilet")]),
    ("People on skis with their puppies and knives.", [("people", "person"), ("skis", "skis"), ("puppy", "dog"),
                                                       ("knife", "knife")]),
    ("A GIRAFFE!", [("giraffe", "giraffe")]),
    ("", []),
])
def test_mentions(caption, expected):
    assert mentions(caption) == expected


def test_chair_by_hand(tmp_path):
    instances = {"a": {"dog", "couch"}, "b": {"person"}, "c": set()}
    texts = {"f": ["A puppy on a sofa next to a cat.", "A man and a woman.", "An empty room.", "A dog."]}
    result = chair(["a", "b", "c", "d"], texts, instances)
    # a: puppy ✓ sofa ✓ cat ✗; b: man ✓ woman ✓; c: nothing named; d: not in the instances (left out)
    assert result.metrics["f"]["CHAIRi"] == pytest.approx(1 / 5)
    assert result.metrics["f"]["CHAIRs"] == pytest.approx(1 / 3)
    assert result.details["a"]["f"]["chair"] == {"mentioned": ["puppy", "sofa", "cat"], "hallucinated": ["cat"]}
    assert any("1 samples are not in the instances file" in n for n in result.notes)
    # The reference captions add to the image's objects, as the reference implementation does.
    with_refs = chair(["a"], {"f": texts["f"][:1]}, instances, {"a": ["A kitten sleeps by a dog."]})
    assert with_refs.metrics["f"] == {"CHAIRi": 0.0, "CHAIRs": 0.0}


def test_instances_files(tmp_path):
    good = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 18, "name": "dog"}, {"id": 99, "name": "lamp"}],
            "annotations": [{"image_id": 1, "category_id": 18}, {"image_id": 1, "category_id": 99}]}
    path = tmp_path / "i.json"
    path.write_text(json.dumps(good))
    assert load_instances(str(path)) == {"1": {"dog"}, "2": set()}  # keys as strings, unknown categories ignored
    for bad, message in [
        ({"annotations": []}, "categories"),
        ({"categories": [{"id": 1, "name": "lamp"}], "annotations": []}, "no category"),
        ({"categories": [{"id": 1, "name": "dog"}], "annotations": [{"image_id": 1}]}, "annotation 0"),
        ({"categories": [{"id": 1, "name": "dog"}], "annotations": [{"image_id": 1, "category_id": 7}]}, "category 7"),
    ]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=message):
            load_instances(str(path))
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_instances(str(path))
    with pytest.raises(ConfigError, match="not found"):
        load_instances(str(tmp_path / "missing.json"))
