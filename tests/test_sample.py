import json

from capmill.sample import OK, Caption, ImageRef, Sample


def full_sample() -> Sample:
    return Sample(
        key="abc/001",
        image=ImageRef(data=b"\xff\xd8\xffjpegbytes", path="x/y.jpg", url="https://e.com/y.jpg", ext="jpg"),
        alt_text="Café «naïve» — 東京",
        captions={"ssc": Caption("a cat", "ssc", "m/1", "ssc@1", {"candidates": ["b"], "tokens": 3})},
        scores={"clip:ssc": 0.25, "nan": float("nan")},
        status="backend_error",
        error="timeout",
        meta={"url": "https://e.com", "json": {"a": [1, 2]}},
    )


def test_json_round_trip_keeps_every_field():
    s = full_sample()
    back = Sample.from_json(s.to_json(include_image_bytes=True))
    assert back.key == s.key and back.alt_text == s.alt_text and back.status == s.status and back.error == s.error
    assert back.captions["ssc"] == s.captions["ssc"]
    assert back.image.data == s.image.data and back.image.ext == "jpg" and back.image.url == s.image.url
    assert back.meta == s.meta
    assert back.scores["clip:ssc"] == 0.25 and back.scores["nan"] != back.scores["nan"]  # NaN survives
    assert back.to_json(include_image_bytes=True) == s.to_json(include_image_bytes=True)


def test_record_without_bytes_and_required_fields():
    d = json.loads(full_sample().to_json())
    assert {"key", "alt_text", "captions", "scores", "status", "error"} <= set(d)
    assert "data_b64" not in d["image"]
    assert set(d["captions"]["ssc"]) >= {"text", "model", "prompt_id"}


def test_first_failure_wins():
    s = Sample(key="k")
    assert s.ok and s.status == OK
    s.fail("decode_error", "truncated")
    s.fail("backend_error", "later problem")
    assert (s.status, s.error) == ("decode_error", "truncated")


def test_text_of_fields():
    s = full_sample()
    assert s.text("alt_text") == s.alt_text and s.text("ssc") == "a cat" and s.text("missing") is None
