"""The backend protocols every model integration implements.

| protocol                        | does                                                          |
|---------------------------------|---------------------------------------------------------------|
| VisionLanguageModel             | image(s) or a video + prompt → n texts                        |
| AskingVisionLanguageModel       | … + `ask`: yes/no questions → P(yes) from the answer's logits |
| ContrastiveVisionLanguageModel  | … + `forced_logits`: a text's token logits with/without image |
| AudioLanguageModel              | audio + prompt → n texts                                      |
| LanguageModel                   | chat messages → n texts                                       |
| MediaTextScorer                 | L2-normalised text embeddings, and media's in the same space: |
|   ImageTextScorer               |   images (CLIP, SigLIP; videos as the mean of their frames)   |
|   AudioTextScorer               |   audio (CLAP)                                                |
| ImageTextMatcher                | probability that a text matches an image (ITM)                |
| RewardModel                     | one quality score per text (optionally per image)             |
| TextEmbedder                    | L2-normalised text embeddings                                 |
| Detector                        | image (+ phrases) → boxes, labels, scores                     |
| TextRecognizer                  | image → text lines with boxes and confidences (OCR)           |
| TextAnalyzer                    | text → sentences, clauses, words with part of speech, noun phrases |
| SpeechRecognizer                | mono waveform → timestamped transcript segments               |
| SceneGraphParser                | text → scene graph: objects, their attributes, relations      |
| EntailmentModel                 | (premise, hypothesis) → P(entailment / neutral / contradiction) |
| TextToImage                     | prompt → a generated image                                    |

`ask` and `forced_logits` are methods of a VisionLanguageModel backend that can read its own
logits (transformers, vLLM, OpenAI-compatible servers that return `logprobs`, the fake); the two
sub-protocols name them so that a stage needing them says so at setup, while a third-party
backend with `generate` alone still captions.

Vision- and audio-language models share one request type (`VLMRequest`, with images, a video or
audio) and one `generate`, so a stage asks either the same way and one backend may serve both;
a model that cannot take what a request carries answers with an error saying so. Scorers share
`embed_texts`; what else they embed says which media they score (`capmill.backends.embed`
embeds any sample's media with whichever scorer is configured).

Batching is the backend's job: a stage hands over a whole list of requests and gets one
`Generation` per request back, in order. A request the backend could not serve comes back with
`error` set instead of raising, so one bad sample never costs the batch, and with `transient`
saying whether asking again later may succeed:

- transient: connection refused or reset, timeouts, 429/5xx after every retry, malformed or
  truncated answers after every retry, a device out of memory — the sample becomes
  `transient_error` (retryable: never committed as its result beyond a small budget);
- final: a refusal, a content filter, a request the server rejects as it is (bad input), an
  empty answer — the sample becomes `backend_error`.

Problems that concern every request at start (model missing, server down) raise `SetupError`
from `load()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from pydantic import Field, model_validator

from capmill.components import Strict

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from capmill.sample import Waveform


class GenerationParams(Strict):
    """Decoding settings shared by every generating backend. Backends map them to their own API
    and say in their docs what they cannot honour (e.g. beams over HTTP)."""

    max_new_tokens: int = Field(128, ge=1)
    # 0 means greedy decoding: captions for training data should be reproducible by default.
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    num_beams: int = Field(1, ge=1)
    repetition_penalty: float | None = Field(None, gt=0)
    seed: int | None = 0
    # Classifier-free guidance (Kornblith et al., ICCV 2023): each step decodes from
    # uncond + γ·(cond − uncond) of the log-probabilities with and without the image. None: off.
    # Backends that cannot run the image-free pass refuse it at setup (transformers only).
    guidance_scale: float | None = Field(None, ge=0)

    # Unset guidance stays out of the dump: configs without it keep their hash.
    omit_when_none: ClassVar[frozenset[str]] = frozenset({"guidance_scale"})

    @model_validator(mode="after")
    def _guidance_without_beams(self) -> GenerationParams:
        if self.guidance_scale is not None and self.num_beams > 1:
            raise ValueError("guidance_scale guides greedy or sampled decoding, not beam search: set num_beams: 1")
        return self


@dataclass(slots=True)
class VideoInput:
    """A video as a request carries it: the sampled frames with their timestamps, and the
    encoded bytes for backends that send the file itself (an OpenAI-compatible server that
    takes `video_url`). Backends with a video processor (Qwen2-VL family) take the frames as a
    video; others take them as images with their timestamps in the text."""

    frames: list[Image.Image]
    times: list[float]  # seconds from the start of the video (or clip) for each frame
    seconds: float  # length of the video (or clip)
    data: bytes | None = None
    ext: str | None = None
    path: str | None = None  # where the file is, when its bytes were never read (a folder input)

    def file_bytes(self) -> bytes:
        """The encoded video, read from `path` when the bytes are not at hand."""
        if self.data is None:
            if self.path is None:
                raise ValueError("video request carries neither bytes nor a path")
            import fsspec

            with fsspec.open(self.path, "rb") as f:
                self.data = f.read()
        return self.data

    @property
    def fps(self) -> float:
        """Frames per second of the sampled frames (what video processors call the video's fps)."""
        return len(self.frames) / self.seconds if self.seconds > 0 else 1.0


@dataclass(slots=True)
class AudioInput:
    """Audio as a request carries it: the sample's decoded window as a mono float32 waveform
    (backends resample it to their model's rate), and the encoded file for backends that could
    send the file itself."""

    samples: np.ndarray
    rate: int
    seconds: float  # length of the waveform (the clip's window for a clip)
    data: bytes | None = None
    ext: str | None = None
    path: str | None = None


@dataclass(slots=True)
class VLMRequest:
    prompt: str  # the user turn, text only: the backend inserts the image placeholders itself
    images: list[Image.Image] = field(default_factory=list)
    n: int = 1
    system: str | None = None
    params: GenerationParams | None = None  # None: the backend's configured defaults
    tag: str = ""  # caller's label (e.g. "KEY:FORMAT") for logs and deterministic test doubles
    video: VideoInput | None = None  # a video instead of (or besides) images
    audio: AudioInput | None = None  # audio (for an audio-language model) instead of images


@dataclass(slots=True)
class ChatRequest:
    messages: list[dict[str, str]]  # [{"role": "system"|"user"|"assistant", "content": str}]
    n: int = 1
    params: GenerationParams | None = None
    tag: str = ""


@dataclass(slots=True)
class Generation:
    texts: list[str] = field(default_factory=list)
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # token counts, finish reasons, retries
    # With `error`: the failure may not happen again (see the module docstring).
    transient: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.texts)


@dataclass(slots=True)
class TokenLogits:
    """Per-token logits of a forced continuation, with and without the image (ScaleCap).
    `error` is set (and the lists empty) when the backend could not score this request."""

    tokens: list[str]
    token_ids: list[int]
    with_image: list[float]
    without_image: list[float]
    error: str | None = None


@dataclass(slots=True)
class ForcedRequest:
    """Score `continuation` as the model's answer to `prompt` about `image`, token by token."""

    image: Image.Image | None
    prompt: str
    continuation: str
    tag: str = ""


@dataclass(slots=True)
class AskRequest:
    """A yes/no question about one image."""

    image: Image.Image
    question: str
    tag: str = ""


@dataclass(slots=True)
class Answer:
    """P("yes") for one `AskRequest`: the softmax over the model's "yes" and "no" answer tokens at
    the first answer position. `source` says where it came from: "logits" (the model's own),
    "logprobs" (a server's top log-probabilities) or "text" (a server without logprobs: the
    generated word, so 1.0 or 0.0). `error` is set, and `p_yes` None, when there is no answer."""

    p_yes: float | None
    source: str = "logits"
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    transient: bool = False  # as Generation.transient: asking again later may succeed

    @property
    def ok(self) -> bool:
        return self.error is None and self.p_yes is not None


@dataclass(slots=True)
class Detection:
    """One detected object. `box` is (x0, y0, x1, y1) in pixels of the image handed over."""

    box: tuple[float, float, float, float]
    label: str
    score: float


@dataclass(slots=True)
class Detections:
    """What a detector found in one image; `error` set (and `items` empty) when it failed on it."""

    items: list[Detection] = field(default_factory=list)
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class TextLine:
    """One line (or word group) of text read from an image; `box` as in `Detection`."""

    text: str
    box: tuple[float, float, float, float]
    confidence: float


@dataclass(slots=True)
class RecognizedText:
    """What OCR read in one image, in reading order; `error` set when it failed on it."""

    lines: list[TextLine] = field(default_factory=list)
    error: str | None = None

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


@dataclass(slots=True)
class Span:
    """A piece of an analysed text: character offsets into it and the text itself."""

    start: int
    end: int
    text: str


@dataclass(slots=True)
class Word(Span):
    """A word with its universal part-of-speech tag (ADJ, NOUN, VERB, …) and lemma."""

    pos: str = "X"
    lemma: str = ""


@dataclass(slots=True)
class TextAnalysis:
    """Sentences, clauses (sentences cut at commas and semicolons), words and noun phrases."""

    sentences: list[Span] = field(default_factory=list)
    clauses: list[Span] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    noun_phrases: list[Span] = field(default_factory=list)


@dataclass(slots=True)
class SpeechRequest:
    audio: np.ndarray  # mono float32 samples in [-1, 1]
    rate: int = 16000
    language: str | None = None  # None: detect
    tag: str = ""


@dataclass(slots=True)
class Segment:
    start: float  # seconds from the start of the request's audio
    end: float
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "text": self.text}


@dataclass(slots=True)
class Transcript:
    segments: list[Segment] = field(default_factory=list)
    language: str | None = None
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


@dataclass(slots=True)
class GraphEntity:
    """An object of a scene graph: its name as the text says it (lower-cased, compounds kept:
    "clock tower"), its attributes ("red", "parked") and a count when the text gives one."""

    head: str
    attributes: list[str] = field(default_factory=list)
    quantity: str = ""


@dataclass(slots=True)
class GraphRelation:
    """`subject` and `object` index `SceneGraph.entities`; `relation` is the predicate ("on",
    "holding", "in front of")."""

    subject: int
    relation: str
    object: int


@dataclass(slots=True)
class SceneGraph:
    """What a text says is in a scene. `nouns` are the text's noun tokens as written, when the
    parser tags parts of speech (None otherwise: a consumer that needs them tags the text
    itself). `error` is set, and the graph empty, when the parser failed on this text."""

    entities: list[GraphEntity] = field(default_factory=list)
    relations: list[GraphRelation] = field(default_factory=list)
    nouns: list[str] | None = None
    error: str | None = None

    def triples(self) -> list[tuple[str, str, str]]:
        """(subject, relation, object) with entity names, in order."""
        return [(self.entities[r.subject].head, r.relation, self.entities[r.object].head) for r in self.relations]


@dataclass(slots=True)
class Entailment:
    """How an NLI model reads one (premise, hypothesis) pair: the three class probabilities, or
    `error` (and all three None) when the pair could not be scored."""

    entailment: float | None
    neutral: float | None
    contradiction: float | None
    error: str | None = None

    @property
    def label(self) -> str | None:
        """The most probable class: "entailment", "neutral" or "contradiction"."""
        if self.error is not None or self.entailment is None:
            return None
        scores = {"entailment": self.entailment, "neutral": self.neutral or 0.0, "contradiction": self.contradiction or 0.0}
        return max(scores, key=scores.__getitem__)


@dataclass(slots=True)
class ImageRequest:
    """One image to generate from `prompt`; `seed` makes it reproducible."""

    prompt: str
    seed: int = 0
    tag: str = ""


@dataclass(slots=True)
class GeneratedImage:
    image: Image.Image | None
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.image is not None


@runtime_checkable
class VisionLanguageModel(Protocol):
    model_id: str

    def load(self) -> None: ...

    def generate(self, requests: list[VLMRequest]) -> list[Generation]: ...

    def close(self) -> None: ...


@runtime_checkable
class AskingVisionLanguageModel(VisionLanguageModel, Protocol):
    """A VisionLanguageModel that answers yes/no questions with a probability: one batched
    forward pass per call, no sampling."""

    def ask(self, requests: list[AskRequest]) -> list[Answer]: ...


@runtime_checkable
class ContrastiveVisionLanguageModel(VisionLanguageModel, Protocol):
    """A VisionLanguageModel that scores a given continuation token by token, with the image and
    without it (teacher forcing)."""

    def forced_logits(self, requests: list[ForcedRequest]) -> list[TokenLogits]: ...


@runtime_checkable
class AudioLanguageModel(Protocol):
    """Audio + prompt → n texts: `generate` over requests that carry `audio` (Qwen2-Audio and
    other audio-text-to-text models, an OpenAI-compatible server taking `input_audio`)."""

    model_id: str

    def load(self) -> None: ...

    def generate(self, requests: list[VLMRequest]) -> list[Generation]: ...

    def close(self) -> None: ...


@runtime_checkable
class LanguageModel(Protocol):
    model_id: str

    def load(self) -> None: ...

    def chat(self, requests: list[ChatRequest]) -> list[Generation]: ...

    def close(self) -> None: ...


@runtime_checkable
class MediaTextScorer(Protocol):
    """A dual encoder: texts, and media of the kinds it knows, as L2-normalised embeddings of one
    space, so a dot product of a text row and a media row is their cosine similarity. A scorer
    says which media it embeds by the methods it has besides `embed_texts`: `embed_images`
    (ImageTextScorer; videos are embedded as the mean of their frames) and `embed_audio`
    (AudioTextScorer). Stages that score "the media" (clip_score, rank, eval) take any of them."""

    model_id: str

    def load(self) -> None: ...

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...

    def close(self) -> None: ...


@runtime_checkable
class ImageTextScorer(MediaTextScorer, Protocol):
    def embed_images(self, images: list[Image.Image]) -> np.ndarray: ...


@runtime_checkable
class AudioTextScorer(MediaTextScorer, Protocol):
    """Audio-text dual encoder (CLAP): `embed_audio` takes decoded waveforms at any rate and
    resamples them to the model's own."""

    def embed_audio(self, audio: list[Waveform]) -> np.ndarray: ...


@runtime_checkable
class ImageTextMatcher(Protocol):
    """Image–text matching (a cross-encoder such as BLIP's ITM head): for each (image, text) pair,
    the probability that the text describes the image."""

    model_id: str

    def load(self) -> None: ...

    def match(self, images: list[Image.Image], texts: list[str]) -> np.ndarray: ...

    def close(self) -> None: ...


@runtime_checkable
class RewardModel(Protocol):
    """A learned quality score for each text, optionally read with its image (a sequence-
    classification reward model, Compress & Align): higher is better. `images[i]` is the image of
    `texts[i]` or None; a text-only model ignores them, an image-text one needs them."""

    model_id: str

    def load(self) -> None: ...

    def score(self, texts: list[str], images: list[Image.Image | None] | None = None) -> np.ndarray: ...

    def close(self) -> None: ...


@runtime_checkable
class TextEmbedder(Protocol):
    model_id: str

    def load(self) -> None: ...

    def embed(self, texts: list[str]) -> np.ndarray: ...

    def close(self) -> None: ...


@runtime_checkable
class SpeechRecognizer(Protocol):
    model_id: str

    def load(self) -> None: ...

    def transcribe(self, requests: list[SpeechRequest]) -> list[Transcript]: ...

    def close(self) -> None: ...


@runtime_checkable
class Detector(Protocol):
    """Objects in images. Zero-shot detectors look for `phrases` (one list per image; None or an
    empty list: the detector's own vocabulary, where it has one); closed-set detectors report their
    own labels and ignore phrases. One `Detections` per image, in order."""

    model_id: str

    def load(self) -> None: ...

    def detect(self, images: list[Image.Image], phrases: list[list[str]] | None = None) -> list[Detections]: ...

    def close(self) -> None: ...


@runtime_checkable
class TextRecognizer(Protocol):
    """OCR: the text lines of each image, with boxes and confidences."""

    model_id: str

    def load(self) -> None: ...

    def read(self, images: list[Image.Image]) -> list[RecognizedText]: ...

    def close(self) -> None: ...


@runtime_checkable
class TextAnalyzer(Protocol):
    """Sentences, clauses, words with part of speech and noun phrases of each text."""

    model_id: str

    def load(self) -> None: ...

    def analyze(self, texts: list[str]) -> list[TextAnalysis]: ...

    def close(self) -> None: ...


@runtime_checkable
class SceneGraphParser(Protocol):
    """Texts → scene graphs (objects, attributes, relations), one graph per text, in order."""

    model_id: str

    def load(self) -> None: ...

    def parse(self, texts: list[str]) -> list[SceneGraph]: ...

    def close(self) -> None: ...


@runtime_checkable
class EntailmentModel(Protocol):
    """Natural language inference: does the premise entail, leave open or contradict the
    hypothesis? One `Entailment` per (premise, hypothesis) pair, in order."""

    model_id: str

    def load(self) -> None: ...

    def entail(self, pairs: list[tuple[str, str]]) -> list[Entailment]: ...

    def close(self) -> None: ...


@runtime_checkable
class TextToImage(Protocol):
    """Prompt → image. One `GeneratedImage` per request, in order; a request that failed comes
    back with `error` set instead of raising."""

    model_id: str

    def load(self) -> None: ...

    def generate_images(self, requests: list[ImageRequest]) -> list[GeneratedImage]: ...

    def close(self) -> None: ...


def require(backend: Any, protocol: type, role: str) -> Any:
    """Check at setup that a configured backend can play `role`; say which protocol it lacks."""
    if not isinstance(backend, protocol):
        from capmill.errors import ConfigError

        raise ConfigError(
            f"{role} needs a backend implementing {protocol.__name__}; "
            f"{type(backend).__name__} does not"
        )
    return backend
