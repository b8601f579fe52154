"""Parsers of LLM answers, on the shapes models write and on what they must refuse."""

from capmill.verify.parse import parse_items, parse_sections, yes_no


def test_items_in_every_common_shape():
    assert parse_items('["dog", "red ball", "Dog"]') == ["dog", "red ball"]
    assert parse_items('```json\n{"objects": ["dog", "tree"]}\n```') == ["dog", "tree"]
    assert parse_items("Here are the objects:\n1. dog\n2) a red ball\n- tree") == ["dog", "a red ball", "tree"]
    assert parse_items("dog, red ball; tree.") == ["dog", "red ball", "tree"]
    assert parse_items("None") == []
    assert parse_items("[]") == []
    assert parse_items("dog, cat, tree, sky", max_items=2) == ["dog", "cat"]


def test_items_refuse_prose_and_empty_answers():
    assert parse_items("") is None and parse_items(None) is None and parse_items("   ") is None
    prose = "The picture shows a dog that is playing with a ball near a big tree in the park"
    assert parse_items(prose, max_words=5) is None
    assert parse_items(prose) == [prose]  # without a word limit one long item is a list of one
    assert parse_items('[{"a": 1}]') is None


def test_sections_as_json_and_as_headings():
    assert parse_sections('{"Objects": ["dog"], "claims": "The dog is brown."}', ["objects", "claims"]) == {
        "objects": ["dog"], "claims": ["The dog is brown."]}
    text = "**OBJECTS:** dog, ball\nCLAIMS:\n- The dog is brown.\n- The ball is red.\n"
    assert parse_sections(text, ["objects", "claims"]) == {
        "objects": ["dog", "ball"], "claims": ["The dog is brown.", "The ball is red."]}
    merge = "AGREE:\n- A man stands.\nCONFLICT: none\nUNIQUE:\n1. A dog sleeps."
    assert parse_sections(merge, ["agree", "conflict", "unique"]) == {
        "agree": ["A man stands."], "conflict": [], "unique": ["A dog sleeps."]}


def test_sections_refuse_what_is_not_sectioned():
    assert parse_sections("a dog and a ball", ["objects", "claims"]) is None
    assert parse_sections('{"other": []}', ["objects"]) is None
    assert parse_sections('{"objects": 3}', ["objects"]) is None
    long = "OBJECTS: " + " ".join(["word"] * 12)
    assert parse_sections(long, ["objects"], max_words=6) is None


def test_yes_no():
    assert yes_no("Yes, there is.") is True
    assert yes_no("  no") is False
    assert yes_no("**No.**") is False
    assert yes_no("Maybe") is None and yes_no(None) is None and yes_no("yesterday") is None
