"""A deterministic test double for every backend protocol. Never a default.

`type: fake` exists so pipelines, executors and benchmarks can run without weights. Its texts
carry no meaning: they are derived from a hash of the request's tag (the sample key and format)
and prompt — and, for a video request, the number of frames and the seconds it received, for an
audio request the seconds of audio — so the same input always gives the same output, in any
process and executor. Tests
can also queue exact answers (`responses`) and read back every prompt it saw (`prompts`), the
way llm's mock model works, and script answers by what the prompt contains (`script`): a
model that obeys an injection, refuses, loops or is cut off, deterministically and in any
batch order.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from typing import Literal

import numpy as np
from pydantic import Field

from capmill.backends.base import ChatRequest, Generation, Segment, SpeechRequest, Transcript, VLMRequest
from capmill.components import BackendConfig, Strict

_WORDS = (
    "a photo of the red blue green small large old wooden metal dog cat bicycle street "
    "table window tree sky person woman man child car building river mountain beach cup "
    "plate flower garden road sign light shadow near beside under over with in on and"
).split()


class ScriptedAnswer(Strict):
    """An answer the fake gives to every prompt containing `when` (never consumed)."""

    when: str
    # "{text}" is replaced by the hashed text the fake would otherwise have written, so
    # "{text} PWNED" scripts an injection appended to a plausible answer; "{prompt}" by the first
    # line of the request's instructions (its system prompt, else its prompt): a prompt leak.
    answer: str
    # Reported as the finish reason ("length": the answer was cut at the token limit).
    finish_reason: str | None = None


class FakeBackendConfig(BackendConfig):
    type: Literal["fake"] = "fake"
    model: str = "fake"
    # Words per generated text (before any length policy of the stage applies).
    words: int = Field(12, ge=1)
    # Seconds slept per batch, to emulate model latency in benchmarks.
    delay_s: float = Field(0.0, ge=0)
    # Queued answers, consumed in order before falling back to hashed text.
    responses: list[str] = Field(default_factory=list)
    # Answers chosen by what the prompt contains, checked in order after the queue is empty.
    script: list[ScriptedAnswer] = Field(default_factory=list)
    # Embedding width for the scorer/embedder roles.
    dim: int = Field(32, ge=2)
    # Seconds of audio per transcript segment (the speech-recognizer role).
    segment_seconds: float = Field(5.0, gt=0)
    # Verification roles (see capmill.backends.fake_verify): `ask` answers 0.9 to questions
    # containing a `yes_if` string, 0.1 to those containing a `no_if` one, a hashed value otherwise.
    yes_if: list[str] = Field(default_factory=list)
    no_if: list[str] = Field(default_factory=list)
    # `forced_logits`: words the image does not support (their logit drops with the image).
    unseen_words: list[str] = Field(default_factory=list)
    # `detect`: labels found without phrases; words no phrase containing them is found for.
    labels: list[str] = Field(default_factory=lambda: ["person", "dog"])
    absent: list[str] = Field(default_factory=list)
    # `read`: the text lines the OCR reads in every image.
    ocr_lines: list[str] = Field(default_factory=list)
    # `detect` and `read` fail on images whose smaller side is below this (0: never).
    fail_below_px: int = Field(0, ge=0)

    def build(self) -> FakeBackend:
        return FakeBackend(self)

    def model_ids(self) -> list[str]:
        return [f"fake:{self.model}"]


def hashed_text(seed: str, words: int) -> str:
    digest = hashlib.sha256(seed.encode("utf-8", "replace")).digest()
    while len(digest) < words:
        digest += hashlib.sha256(digest).digest()
    return " ".join(_WORDS[b % len(_WORDS)] for b in digest[:words]).capitalize() + "."


def hashed_vector(seed: bytes, dim: int) -> np.ndarray:
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed).digest()[:8], "little"))
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


class WordPromptTokenizer:
    """The fake's tokenizer, a test double for token budgets: a token is a whitespace-separated
    word, and each chat turn adds 2 tokens (role and end marker) plus 1 for the reply cue, so
    budgets can be worked out by hand."""

    def prompt_length(self, messages: list[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) + 2 for m in messages) + 1

    def encode(self, text: str) -> list[str]:
        return text.split()

    def decode(self, tokens) -> str:
        return " ".join(tokens)


class FakeBackend:
    """Implements every protocol of capmill.backends.base: VisionLanguageModel (with `ask` and
    `forced_logits`), AudioLanguageModel, LanguageModel, ImageTextScorer, AudioTextScorer,
    ImageTextMatcher, RewardModel, TextEmbedder, Detector, TextRecognizer, TextAnalyzer,
    SceneGraphParser, EntailmentModel, TextToImage and SpeechRecognizer (one segment per
    `segment_seconds` of audio, words hashed from the tag, the segment's position and the seconds
    received)."""

    def __init__(self, config: FakeBackendConfig):
        self.config = config
        self.model_id = f"fake:{config.model}"
        self.prompts: list[str] = []
        self.batch_sizes: list[int] = []
        self._responses = deque(config.responses)
        self._lock = threading.Lock()

    def load(self) -> None:
        pass

    def close(self) -> None:
        pass

    def _answer(self, seed: str, prompt: str, n: int, instructions: str = "") -> Generation:
        with self._lock:
            queued = [self._responses.popleft() for _ in range(min(n, len(self._responses)))]
        texts, reasons = list(queued), ["stop"] * len(queued)
        for i in range(len(queued), n):
            text, reason = hashed_text(f"{seed}#{i}", self.config.words), "stop"
            rule = next((r for r in self.config.script if r.when in prompt), None)
            if rule is not None:
                leak = instructions.strip().split("\n", 1)[0][:200]
                text, reason = rule.answer.replace("{text}", text).replace("{prompt}", leak), rule.finish_reason or "stop"
            texts.append(text)
            reasons.append(reason)
        meta = {"backend": "fake"}
        if self.config.script:
            meta["finish_reasons"] = reasons
        return Generation(texts=texts, meta=meta)

    def _sleep(self) -> None:
        if self.config.delay_s:
            time.sleep(self.config.delay_s)

    def generate(self, requests: list[VLMRequest]) -> list[Generation]:
        self._sleep()
        with self._lock:
            self.prompts.extend(r.prompt for r in requests)
            self.batch_sizes.append(len(requests))
        return [self._generation(r) for r in requests]

    def _generation(self, r: VLMRequest) -> Generation:
        seed = f"{r.tag}|{r.prompt}"
        if r.video is not None:
            frames, seconds = len(r.video.frames), round(r.video.seconds, 1)
            seed += f"|{frames} frames|{seconds} s"
        if r.audio is not None:
            audio_seconds = round(r.audio.seconds, 1)
            seed += f"|{audio_seconds} s audio"
        gen = self._answer(seed, f"{r.system or ''}\n{r.prompt}", r.n, r.system or r.prompt)
        if r.video is not None:
            gen.meta.update(frames=frames, seconds=seconds)
        if r.audio is not None:
            gen.meta.update(seconds=audio_seconds)
        return gen

    def chat(self, requests: list[ChatRequest]) -> list[Generation]:
        self._sleep()
        out = []
        for r in requests:
            rendered = "\n".join(f"{m['role']}: {m['content']}" for m in r.messages)
            with self._lock:
                self.prompts.append(rendered)
            out.append(self._answer(f"{r.tag}|{rendered}", rendered, r.n, r.messages[0]["content"] if r.messages else ""))
        with self._lock:
            self.batch_sizes.append(len(requests))
        return out

    def transcribe(self, requests: list[SpeechRequest]) -> list[Transcript]:
        self._sleep()
        out = []
        for r in requests:
            seconds = len(r.audio) / r.rate if r.rate else 0.0
            step = self.config.segment_seconds
            segments, start = [], 0.0
            while start < seconds:
                end = min(seconds, start + step)
                segments.append(Segment(start, end, hashed_text(f"{r.tag}|{start:.1f}|{seconds:.1f} s", self.config.words)))
                start = end
            with self._lock:
                self.batch_sizes.append(1)
            out.append(Transcript(segments=segments, language=r.language or "en", meta={"backend": "fake"}))
        return out

    def embed_images(self, images) -> np.ndarray:
        return np.stack([hashed_vector(img.tobytes(), self.config.dim) for img in images]) if images else np.zeros((0, self.config.dim), np.float32)

    def embed_audio(self, audio) -> np.ndarray:
        """AudioTextScorer: a vector hashed from the waveform's samples (as 16-bit values, so the
        same sound decoded by another decoder with float noise below that maps to the same row)."""
        rows = [hashed_vector((np.clip(w.samples, -1, 1) * 32767).round().astype("<i2").tobytes(), self.config.dim)
                for w in audio]
        return np.stack(rows) if rows else np.zeros((0, self.config.dim), np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return np.stack([hashed_vector(t.encode("utf-8", "replace"), self.config.dim) for t in texts]) if texts else np.zeros((0, self.config.dim), np.float32)

    embed = embed_texts

    def prompt_tokenizer(self) -> WordPromptTokenizer:
        return WordPromptTokenizer()

    def match(self, images, texts: list[str]) -> np.ndarray:
        """ImageTextMatcher: a probability derived from a hash of the pixels and the text."""
        return np.array([int.from_bytes(hashlib.sha256(img.tobytes() + t.encode("utf-8", "replace")).digest()[:4],
                                        "little") / 2**32 for img, t in zip(images, texts, strict=True)], np.float32)

    def score(self, texts: list[str], images=None) -> np.ndarray:
        """RewardModel: a value in [0, 1) derived from a hash of the text (and the image's pixels)."""
        images = images if images is not None else [None] * len(texts)
        return np.array([int.from_bytes(hashlib.sha256((img.tobytes() if img is not None else b"") + t.encode(
            "utf-8", "replace")).digest()[:4], "little") / 2**32 for img, t in zip(images, texts, strict=True)], np.float32)

    # --- verification protocols (capmill.backends.fake_verify) -------------------------------

    def _count(self, n: int) -> None:
        self._sleep()
        with self._lock:
            self.batch_sizes.append(n)

    def ask(self, requests):
        from capmill.backends import fake_verify

        self._count(len(requests))
        return fake_verify.ask(self.config, requests)

    def forced_logits(self, requests):
        from capmill.backends import fake_verify

        self._count(len(requests))
        return fake_verify.forced_logits(self.config, requests)

    def detect(self, images, phrases=None):
        from capmill.backends import fake_verify

        self._count(len(images))
        return fake_verify.detect(self.config, images, phrases)

    def read(self, images):
        from capmill.backends import fake_verify

        self._count(len(images))
        return fake_verify.read(self.config, images)

    def analyze(self, texts):
        from capmill.backends import fake_verify

        self._count(len(texts))
        return fake_verify.analyze(texts)

    # --- evaluation protocols: SceneGraphParser, EntailmentModel, TextToImage ------------------

    def parse(self, texts):
        from capmill.backends import fake_verify

        self._count(len(texts))
        return fake_verify.parse(texts)

    def entail(self, pairs):
        from capmill.backends import fake_verify

        self._count(len(pairs))
        return fake_verify.entail(self.config, pairs)

    def generate_images(self, requests):
        from capmill.backends import fake_verify

        self._count(len(requests))
        return fake_verify.generate_images(requests)
