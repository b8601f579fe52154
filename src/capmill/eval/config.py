"""What `capmill eval` computes and with which models (`EvalConfig`), and what it returns
(`EvalResult`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field

from capmill.components import BackendSpec, Strict
from capmill.eval.arena import ArenaConfig
from capmill.eval.capture import CaptureConfig
from capmill.eval.facts import FactsConfig
from capmill.eval.openchair import OpenChairConfig
from capmill.eval.vdcscore import VdcScoreConfig

# Metric groups `skip` turns off.
Metric = Literal["text", "clip", "retrieval", "truematch", "coco", "vdc", "capture", "richness", "chair", "openchair",
                 "facts", "image_score", "arena"]
METRICS: tuple[str, ...] = Metric.__args__  # type: ignore[attr-defined]


def _default_scorer(audio: bool = False) -> dict:
    if audio:  # LAION-CLAP, the audio-text counterpart the audio recipes score with
        return {"type": "clap", "model": "laion/clap-htsat-unfused"}
    # Hessel et al. report CLIPScore with ViT-B/32; its figures are only comparable with that model.
    return {"type": "clip", "model": "openai/clip-vit-base-patch32"}


# Default backends of the roles a config leaves empty: each works offline with capmill[eval,text,transformers].
DEFAULTS: dict[str, dict[str, Any]] = {
    "parser": {"type": "spacy_scene_graph"},
    "analyzer": {"type": "spacy"},
    "embedder": {"type": "sentence_transformers"},
}


class EvalConfig(Strict):
    fields: list[str] = Field(default_factory=lambda: ["alt_text"], min_length=1)
    # A MediaTextScorer for CLIPScore, RefCLIPScore, self-retrieval and CLIP-Image-Score; None: CLIP
    # ViT-B/32, or for a set of audio CLAP (laion/clap-htsat-unfused), whose figures are named CLAPScore.
    scorer: BackendSpec | None = None
    # Distractors per bag for retrieval with distractors (99 gives RD100).
    bags: list[int] = Field(default_factory=lambda: [99])
    # TrueMatch bag sizes (bags of mutually similar images).
    truematch: list[Annotated[int, Field(ge=2)]] = Field(default_factory=lambda: [3, 5, 7])
    seed: int = 0
    skip: list[Metric] = Field(default_factory=list)
    # Clip the text–reference cosine at 0 in RefCLIPScore (the reference code does not).
    clip_reference: bool = False
    batch_size: int = Field(64, ge=1)
    # A SceneGraphParser for CAPTURE and facts_per_caption; None: capmill's spaCy rules (offline).
    parser: BackendSpec | None = None
    # A TextAnalyzer giving CAPTURE the texts' nouns when the parser gives none; None: spaCy.
    analyzer: BackendSpec | None = None
    # A TextEmbedder for CAPTURE's soft matching; None: all-MiniLM-L6-v2 (bundled).
    embedder: BackendSpec | None = None
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    # The judge: a LanguageModel for OpenCHAIR and the fact lists, a VisionLanguageModel for the
    # pairwise arena (`--compare`). None: those metrics are not computed.
    judge: BackendSpec | None = None
    # An AskingVisionLanguageModel that checks facts against the image (fact precision).
    verifier: BackendSpec | None = None
    # An EntailmentModel that checks facts against the references (fact precision without a
    # verifier, and fact recall).
    nli: BackendSpec | None = None
    # A TextToImage backend for CLIP-Image-Score. None: not computed.
    t2i: BackendSpec | None = None
    facts: FactsConfig = Field(default_factory=FactsConfig)
    openchair: OpenChairConfig = Field(default_factory=OpenChairConfig)
    arena: ArenaConfig = Field(default_factory=ArenaConfig)
    # VDCscore (video detail captions, AuroraCap/VDC): a language model that asks, answers and
    # judges; computed when references are given too. None: not computed.
    vdc: VdcScoreConfig | None = None

    def scorer_config(self, audio: bool = False):
        """The configured scorer, else the default for the set's media (`audio`: a set of audio)."""
        return self.scorer if self.scorer is not None else _spec(_default_scorer(audio))

    def backend(self, role: str):
        """The configured backend of `role`, or its default (DEFAULTS), or None."""
        value = getattr(self, role)
        if value is None and role in DEFAULTS:
            return _spec(DEFAULTS[role])
        return value

    def runs(self, metric: str) -> bool:
        # TrueMatch is self-retrieval in other bags: skipping retrieval skips it too.
        if metric == "truematch" and "retrieval" in self.skip:
            return False
        return metric not in self.skip

    def needs_images(self) -> bool:
        """Whether any metric that will run reads the images."""
        return (any(self.runs(m) for m in ("clip", "retrieval", "truematch"))
                or (self.t2i is not None and self.runs("image_score"))
                or (self.judge is not None and self.runs("arena"))
                or (self.verifier is not None and self.judge is not None and self.runs("facts")))

    def needs_scorer(self) -> bool:
        return any(self.runs(m) for m in ("clip", "retrieval", "truematch")) or (self.t2i is not None and self.runs("image_score"))


def _spec(raw: dict[str, Any]):
    from pydantic import TypeAdapter

    return TypeAdapter(BackendSpec).validate_python(raw)


@dataclass
class EvalResult:
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # key → field → metric family → what the sample's figures rest on (facts found, matched,
    # hallucinated; the arena's order and verdict); written beside the history, shown by the report.
    details: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, dict[str, float | None]]:
        return {f: {m: (None if isinstance(v, float) and math.isnan(v) else v) for m, v in ms.items()}
                for f, ms in self.metrics.items()}

    def add_details(self, details: dict[str, dict[str, dict[str, Any]]]) -> None:
        for key, fields in details.items():
            for name, families in fields.items():
                self.details.setdefault(key, {}).setdefault(name, {}).update(families)

    def absorb(self, part: Any) -> None:
        """Metrics, notes and details of a metric family's result."""
        for name, metrics in part.metrics.items():
            self.metrics.setdefault(name, {}).update(metrics)
        self.notes.extend(n for n in part.notes if n not in self.notes)
        self.add_details(getattr(part, "details", {}) or {})
