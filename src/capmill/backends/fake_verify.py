"""The fake backend's answers for the verification protocols. A documented test double.

`type: fake` answers `ask`, `forced_logits`, `detect`, `read`, `analyze` — and the evaluation roles `parse` (scene
graphs), `entail` (NLI) and `generate_images` — deterministically,
from hashes of the request and from a few scripted knobs of its config, so that stages built on
them can be tested without weights: which questions get a "yes", which words the image does not
support, which phrases the detector cannot find, which text the OCR reads, and from which image
size on the detector and the OCR fail. Its text analysis is a small rule set (sentence and clause
marks, a closed list of function words, everything else a noun or, after "is"/"are", a verb);
it carries no linguistic knowledge and exists only to drive tests. Its scene graph is that analysis
read naively (every noun an object, no attribute, no relation); its NLI says "entailment" when
every noun of the hypothesis occurs in the premise, "contradiction" when the hypothesis contains
a `no_if` string, "neutral" otherwise; its images are flat colours hashed from the prompt and seed.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

from capmill.backends.base import (
    Answer,
    AskRequest,
    Detection,
    Detections,
    Entailment,
    ForcedRequest,
    GeneratedImage,
    GraphEntity,
    ImageRequest,
    RecognizedText,
    SceneGraph,
    Span,
    TextAnalysis,
    TextLine,
    TokenLogits,
    Word,
)

if TYPE_CHECKING:
    from PIL import Image

    from capmill.backends.fake import FakeBackendConfig

_TOKEN = re.compile(r"\s*[\w'’-]+|\s*[^\w\s]|\s+")
_FUNCTION = {
    "DET": "a an the this that these those some any each every no".split(),
    "ADP": "of in on at by for with from to into onto over under near beside behind above below between across".split(),
    "CCONJ": "and or but nor".split(),
    "PRON": "it its he she they them his her their we you i".split(),
    "AUX": "is are was were be been being has have had do does did can could will would".split(),
    "PART": "not to".split(),
}
_POS = {w: pos for pos, ws in _FUNCTION.items() for w in ws}


def unit(seed: str) -> float:
    """A number in [0, 1) fixed by `seed`."""
    return int.from_bytes(hashlib.sha256(seed.encode("utf-8", "replace")).digest()[:8], "little") / 2**64


def tokens_of(text: str) -> list[str]:
    return _TOKEN.findall(text)


def ask(config: FakeBackendConfig, requests: list[AskRequest]) -> list[Answer]:
    out = []
    for r in requests:
        q = r.question.lower()
        if any(w.lower() in q for w in config.yes_if):
            p = 0.9
        elif any(w.lower() in q for w in config.no_if):
            p = 0.1
        else:
            p = round(unit(f"{r.tag}|{r.question}"), 4)
        out.append(Answer(p_yes=p, source="logits", meta={"backend": "fake"}))
    return out


def forced_logits(config: FakeBackendConfig, requests: list[ForcedRequest]) -> list[TokenLogits]:
    """Every token gains 1.0 from the image, except the words listed in `unseen_words`, which lose
    1.0 (a language-prior guess); without an image both passes are the same."""
    unseen = {w.lower() for w in config.unseen_words}
    out = []
    for r in requests:
        tokens = tokens_of(r.continuation)
        with_image = [2.0 for _ in tokens]
        without = [(3.0 if t.strip().lower() in unseen else 1.0) for t in tokens]
        if r.image is None:
            without = list(with_image)
        out.append(TokenLogits(tokens=tokens, token_ids=list(range(len(tokens))), with_image=with_image,
                               without_image=without))
    return out


def _too_small(config: FakeBackendConfig, image: Image.Image) -> str | None:
    if config.fail_below_px and min(image.size) < config.fail_below_px:
        return f"image of {image.width}×{image.height} px is below the fake's {config.fail_below_px} px"
    return None


def detect(config: FakeBackendConfig, images: list[Image.Image], phrases: list[list[str]] | None) -> list[Detections]:
    absent = {w.lower() for w in config.absent}
    out = []
    for i, image in enumerate(images):
        problem = _too_small(config, image)
        if problem:
            out.append(Detections(error=problem))
            continue
        wanted = (phrases[i] if phrases and phrases[i] else None) or list(config.labels)
        found = []
        w, h = image.size
        for label in wanted:
            if any(word in absent for word in re.findall(r"[\w'-]+", label.lower())):
                continue
            a, b, c, d = (unit(f"{label}|{k}|{w}x{h}") for k in range(4))
            x0, y0 = a * w * 0.5, b * h * 0.5
            found.append(Detection(box=(x0, y0, x0 + (0.2 + c * 0.5) * w * 0.5 + 1, y0 + (0.2 + d * 0.5) * h * 0.5 + 1),
                                   label=label, score=round(0.5 + unit(f"score|{label}") * 0.5, 4)))
        out.append(Detections(items=found, meta={"backend": "fake"}))
    return out


def read(config: FakeBackendConfig, images: list[Image.Image]) -> list[RecognizedText]:
    out = []
    for image in images:
        problem = _too_small(config, image)
        if problem:
            out.append(RecognizedText(error=problem))
            continue
        lines = [TextLine(text=t, box=(2.0, 2.0 + 12 * k, 2.0 + 6 * len(t), 12.0 + 12 * k), confidence=0.9)
                 for k, t in enumerate(config.ocr_lines)]
        out.append(RecognizedText(lines=lines))
    return out


def analyze(texts: list[str]) -> list[TextAnalysis]:
    return [_analyze(t) for t in texts]


def _spans(text: str, marks: str) -> list[Span]:
    out, start = [], 0
    for m in re.finditer(f"[{re.escape(marks)}]+|\\n+", text):
        piece = text[start:m.end() if m.group(0).strip() in ".?!" or m.group(0)[:1] in ".?!" else m.start()]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            out.append(Span(start + lead, start + len(piece.rstrip()), piece.strip()))
        start = m.end()
    if text[start:].strip():
        piece = text[start:]
        lead = len(piece) - len(piece.lstrip())
        out.append(Span(start + lead, start + len(piece.rstrip()), piece.strip()))
    return out


def _analyze(text: str) -> TextAnalysis:
    words, previous = [], ""
    for m in re.finditer(r"[\w'’-]+|[^\w\s]", text):
        token = m.group(0)
        low = token.lower()
        if not re.match(r"\w", token):
            pos = "PUNCT"
        elif low in _POS:
            pos = _POS[low]
        elif token[0].isdigit():
            pos = "NUM"
        elif previous in ("is", "are", "was", "were") or low.endswith("ing"):
            pos = "VERB"
        else:
            pos = "NOUN"
        words.append(Word(m.start(), m.end(), token, pos=pos, lemma=low))
        previous = low
    phrases, run = [], []
    for word in words + [Word(len(text), len(text), "", pos="PUNCT")]:
        if word.pos in ("NOUN", "NUM", "ADJ"):
            run.append(word)
        else:
            if run:
                phrases.append(Span(run[0].start, run[-1].end, text[run[0].start:run[-1].end]))
            run = []
    return TextAnalysis(sentences=_spans(text, ".?!"), clauses=_spans(text, ".?!,;"), words=words,
                        noun_phrases=phrases)


def parse(texts: list[str]) -> list[SceneGraph]:
    out = []
    for analysis in analyze(texts):
        nouns = [w.text for w in analysis.words if w.pos == "NOUN"]
        heads = list(dict.fromkeys(n.lower() for n in nouns))
        out.append(SceneGraph(entities=[GraphEntity(head=h) for h in heads], nouns=nouns))
    return out


def entail(config: FakeBackendConfig, pairs: list[tuple[str, str]]) -> list[Entailment]:
    out = []
    for premise, hypothesis in pairs:
        said = {w.lemma for w in _analyze(premise).words}
        nouns = [w.lemma for w in _analyze(hypothesis).words if w.pos == "NOUN"]
        if any(w.lower() in hypothesis.lower() for w in config.no_if):
            out.append(Entailment(0.05, 0.05, 0.9))
        elif nouns and all(n in said for n in nouns):
            out.append(Entailment(0.9, 0.05, 0.05))
        else:
            out.append(Entailment(0.1, 0.8, 0.1))
    return out


def generate_images(requests: list[ImageRequest]) -> list[GeneratedImage]:
    from PIL import Image

    out = []
    for r in requests:
        colour = tuple(int(255 * unit(f"{r.prompt}|{r.seed}|{c}")) for c in range(3))
        out.append(GeneratedImage(image=Image.new("RGB", (64, 64), colour), meta={"backend": "fake"}))
    return out
