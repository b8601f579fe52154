"""Boxes read from a record: normalised, pixel, refused with a reason, cropped."""

from PIL import Image

from capmill.regions import Box, crop, parse_boxes


def test_shapes_and_units():
    raw = [[0.1, 0.2, 0.5, 0.6], {"box": [0.0, 0.0, 1.0, 1.0], "score": 0.9, "label": "dog"},
           {"bbox": [0.2, 0.2, 0.4, 0.4]}]
    boxes, problems = parse_boxes(raw, 200, 100)
    assert not problems
    assert [b.as_list() for b in boxes] == [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.4, 0.4]]
    assert boxes[1].score == 0.9 and boxes[1].label == "dog" and boxes[0].score is None
    pixels, _ = parse_boxes([[20, 10, 100, 50]], 200, 100, units="pixels")
    assert pixels[0].as_list() == [0.1, 0.1, 0.5, 0.5]
    as_json, _ = parse_boxes('[[0.1, 0.1, 0.2, 0.2]]', 1, 1)
    assert as_json[0].as_list() == [0.1, 0.1, 0.2, 0.2]


def test_bad_boxes_are_refused_with_reasons_and_small_overshoots_clipped():
    boxes, problems = parse_boxes([[0.1, 0.1, 0.2], ["a", 0, 1, 1], [0.5, 0.5, 0.4, 0.9], [0.0, 0.0, 3.0, 1.0],
                                   [-0.01, 0.0, 1.01, 1.0], [float("nan"), 0, 1, 1], True], 10, 10)
    assert [b.as_list() for b in boxes] == [[0.0, 0.0, 1.0, 1.0]]
    assert problems == ["box 0: not four numbers", "box 1: not four numbers", "box 2: empty or inverted",
                        "box 3: outside the image", "box 5: not four numbers", "box 6: not four numbers"]
    assert parse_boxes({"not": "a list"}, 1, 1) == ([], ["boxes are not a list (got dict)"])
    assert parse_boxes("not json", 1, 1)[1] == ["boxes are not a list (got str)"]


def test_crop_and_margin():
    image = Image.new("RGB", (100, 50))
    box = Box(0.1, 0.2, 0.5, 0.6)
    assert box.pixels(100, 50) == (10, 10, 50, 30)
    assert crop(image, box).size == (40, 20)
    # a margin of a quarter of the box on every side, kept inside the image
    assert box.pixels(100, 50, margin=0.25) == (0, 5, 60, 35)
    assert Box(0.0, 0.0, 1.0, 1.0).pixels(100, 50, margin=0.5) == (0, 0, 100, 50)
