"""Region geometry and fact serialisation against hand-worked results."""

import pytest

from capmill.verify.facts import group_objects, reading_order
from capmill.verify.regions import (
    ADJACENT,
    QUADRANTS,
    clip,
    head_noun,
    iou,
    main_region,
    matches,
    normalised,
    quadrants,
    too_small,
    union,
)


def test_quadrants_cover_the_box_and_adjacent_pairs_share_an_edge():
    quads = quadrants((10, 20, 110, 220))
    assert quads == [(10, 20, 60, 120), (60, 20, 110, 120), (10, 120, 60, 220), (60, 120, 110, 220)]
    assert QUADRANTS[1] == "top-right"
    for a, b in ADJACENT:
        qa, qb = quads[a], quads[b]
        shares_vertical_edge = qa[2] == qb[0] and qa[1] == qb[1]
        shares_horizontal_edge = qa[3] == qb[1] and qa[0] == qb[0]
        assert shares_vertical_edge or shares_horizontal_edge, (a, b)
    assert len(ADJACENT) == 4 and (0, 3) not in ADJACENT and (1, 2) not in ADJACENT  # diagonals are not adjacent


def test_iou_union_clip_normalise():
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    assert union([(0, 5, 10, 10), (5, 0, 20, 8)]) == (0, 0, 20, 10)
    assert union([]) is None
    assert clip((-5, 10, 130, 90), 100, 80) == (0, 10, 100, 80)
    assert normalised((25, 20, 100, 80), 100, 80) == [0.25, 0.25, 1.0, 1.0]
    assert too_small((0, 0, 27.5, 100), 28) is False  # a fraction rounds the crop up
    assert too_small((0, 0, 26.9, 100), 28) is True


def test_objects_match_detector_labels_by_head_noun():
    assert head_noun("two red cars") == "car" and head_noun("boxes") == "box" and head_noun("puppies") == "puppy"
    assert head_noun("glass") == "glass" and head_noun("bus") == "bus" and head_noun("") == ""
    assert matches("dog", ["a brown dog", "ball"]) == "a brown dog"
    assert matches("dogs", ["dog"]) == "dog"
    assert matches("traffic light", ["light"]) == "light"
    assert matches("person", ["man", "ball"]) is None


def test_main_region_is_the_union_of_matched_confident_boxes():
    detections = [((10, 10, 50, 40), "dog", 0.9), ((60, 20, 90, 70), "ball", 0.5), ((0, 0, 100, 100), "dog", 0.2),
                  ((70, 70, 120, 90), "cat", 0.95)]
    region, matched = main_region(detections, ["dog", "ball"], 100, 80, min_score=0.3)
    # dog 0.9 and ball 0.5 match; the 0.2 dog is below the score; the cat was not named
    assert region == (10, 10, 90, 70)
    assert [(m["label"], m["score"], m["box"]) for m in matched] == [("dog", 0.9, [0.1, 0.12, 0.5, 0.5]),
                                                                      ("ball", 0.5, [0.6, 0.25, 0.9, 0.88])]
    whole, none = main_region(detections, ["horse"], 100, 80, min_score=0.3)
    assert whole == (0.0, 0.0, 100.0, 80.0) and none == []


def test_objects_grouped_sorted_and_bounded():
    detections = [((0, 0, 10, 10), "Person", 0.8), ((50, 0, 60, 10), "person", 0.9), ((0, 0, 5, 5), "dog", 0.9),
                  ((0, 0, 1, 1), "cat", 0.1), ((0, 0, 100, 100), "car", 0.4), ((0, 0, 2, 2), "", 0.9)]
    facts, dropped = group_objects(detections, 100, 100, min_score=0.3, max_objects=2)
    # by best score (0.9 dog and person tie → label order), then car at 0.4 falls past max_objects
    assert [(f.label, f.count, f.score, f.box) for f in facts] == [("dog", 1, 0.9, (0.0, 0.0, 0.05, 0.05)),
                                                                   ("person", 2, 0.9, (0.5, 0.0, 0.6, 0.1))]
    assert dropped == {"below_score": 1, "over_max_objects": 1, "no_label": 1}
    assert facts[1].line() == "2 × person (0.90) at [0.50, 0.00, 0.60, 0.10]"
    # the same detections in another order give the same facts
    assert group_objects(list(reversed(detections)), 100, 100, 0.3, 2)[0] == facts


def test_ocr_lines_in_reading_order_bounded():
    lines = [("world", (60, 10, 100, 30), 0.9), ("hello", (0, 12, 50, 30), 0.95), ("below", (0, 50, 40, 70), 0.9),
             ("smudge", (0, 80, 10, 90), 0.2), ("x" * 50, (0, 100, 40, 120), 0.9), ("  ", (0, 0, 1, 1), 0.9)]
    kept, dropped = reading_order(lines, min_confidence=0.5, max_lines=3, max_chars=20)
    assert kept == [("hello", 0.95), ("world", 0.9), ("below", 0.9)]
    assert dropped == {"below_confidence": 1, "over_max_lines": 1}
    cut, why = reading_order(lines[4:5], 0.5, 3, 20)
    assert cut == [("x" * 20 + " …", 0.9)] and why == {"cut_long_line": 1}
