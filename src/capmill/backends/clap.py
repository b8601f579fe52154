"""CLAP audio-text scorer (`type: clap`): transformers' `ClapModel` as an AudioTextScorer.

CLAP (Contrastive Language-Audio Pretraining; LAION-CLAP, Wu et al., ICASSP 2023) embeds audio
and text in one space, as CLIP does images and text; capmill scores, ranks, filters and
evaluates audio captions with it exactly as it does image captions with CLIP (`clip_score`,
`capmill eval`, `rank` in the audio recipes).

    backend: {type: clap}                                        # laion/clap-htsat-unfused
    backend: {type: clap, model: laion/larger_clap_general, device: cuda}

Audio arrives as decoded waveforms at the run's rate and is resampled to the feature
extractor's (48 kHz for LAION's checkpoints). The feature extractor sees at most `max_length_s`
(10 s) at a time and crops longer input at random; so that a score never depends on chance,
longer audio is cut into consecutive windows of that length (a last window under a second joins
nothing and is left out, unless it is all there is), each embedded as it is, and the audio's
embedding is the normalised mean of its windows'. Shorter audio is repeated to fill the window
("repeatpad", as the model was trained). Every embedding comes back L2-normalised, computed in
chunks of `batch_size` windows; batched results equal one-at-a-time ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from capmill.backends.availability import load_pretrained
from capmill.backends.common import import_torch_stack, pick_device
from capmill.components import BackendConfig
from capmill.errors import SetupError

if TYPE_CHECKING:
    import numpy as np

    from capmill.sample import Waveform

# A final window shorter than this (seconds) is left out when the audio has longer ones.
MIN_WINDOW_SECONDS = 1.0


class ClapScorerConfig(BackendConfig):
    type: Literal["clap"] = "clap"
    # Hub id or local folder of a transformers CLAP model (ClapModel + ClapProcessor).
    model: str = "laion/clap-htsat-unfused"
    revision: str | None = None
    device: str = "auto"
    # Audio windows (and texts) per forward pass.
    batch_size: int = Field(32, ge=1)
    trust_remote_code: bool = False
    # Seconds per window; None: the feature extractor's own `max_length_s` (10 s for LAION's).
    window_seconds: float | None = Field(None, gt=0)
    # Seconds of each clip embedded, from its start; None: all of it. SLAM-AAC's CLAP-Refine
    # hears the first 10 s of every clip.
    max_seconds: float | None = Field(None, gt=0)

    # The media this scorer embeds (clip_score, rank and eval read it before anything loads).
    media_kinds: ClassVar[tuple[str, ...]] = ("audio",)

    def build(self) -> ClapScorer:
        return ClapScorer(self)

    def model_ids(self) -> list[str]:
        return [self.model]


def windows(samples: np.ndarray, size: int, min_last: int) -> list[np.ndarray]:
    """`samples` as consecutive windows of `size`; the last may be shorter, and is dropped when
    it holds fewer than `min_last` samples and earlier windows exist."""
    if len(samples) <= size:
        return [samples]
    parts = [samples[i:i + size] for i in range(0, len(samples), size)]
    if len(parts[-1]) < min_last:
        parts = parts[:-1]
    return parts


class ClapScorer:
    """AudioTextScorer through transformers' ClapModel (see the module docstring)."""

    def __init__(self, config: ClapScorerConfig):
        self.config = config
        self.model_id = config.model
        self.model: Any = None

    def load(self) -> None:
        if self.model is not None:
            return
        import_torch_stack()
        from transformers import AutoModel, AutoProcessor

        cfg = self.config
        remote = {"trust_remote_code": cfg.trust_remote_code}
        self.processor, model = load_pretrained(cfg.model, cfg.revision, "scorer model", lambda path: (
            AutoProcessor.from_pretrained(path, **remote), AutoModel.from_pretrained(path, **remote)))
        self.extractor = getattr(self.processor, "feature_extractor", None)
        if not (hasattr(model, "get_audio_features") and hasattr(model, "get_text_features") and self.extractor is not None):
            raise SetupError(f"scorer model {cfg.model!r} is not an audio-text dual encoder (CLAP) with a feature "
                             "extractor")
        self.device = pick_device(cfg.device)
        self.model = model.to(self.device).eval()
        self.rate = int(self.extractor.sampling_rate)
        seconds = cfg.window_seconds or float(getattr(self.extractor, "max_length_s", 10) or 10)
        self.window = int(round(seconds * self.rate))
        text_config = model.config.text_config
        # RoBERTa's positions start after the padding index: two fewer than the table holds.
        self.max_length = min(int(getattr(self.processor.tokenizer, "model_max_length", 512) or 512),
                              int(getattr(text_config, "max_position_embeddings", 514)) - 2)
        self.dim = int(getattr(model.config, "projection_dim", 512))

    def close(self) -> None:
        self.model = None

    def _require_loaded(self) -> None:
        if self.model is None:
            raise SetupError(f"scorer {self.model_id!r} used before load()")

    def embed_audio(self, audio: list[Waveform]) -> np.ndarray:
        import numpy as np
        import torch

        from capmill.media.audio import at_rate

        self._require_loaded()
        parts: list[np.ndarray] = []
        owner: list[int] = []
        for i, wave in enumerate(audio):
            samples = at_rate(wave, self.rate)
            if self.config.max_seconds is not None:
                samples = samples[: int(round(self.config.max_seconds * self.rate))]
            if not len(samples):
                samples = np.zeros(self.rate // 10, np.float32)  # nothing to hear: a moment of silence
            for part in windows(samples, self.window, int(MIN_WINDOW_SECONDS * self.rate)):
                parts.append(part)
                owner.append(i)
        size = self.config.batch_size
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(parts), size):
                inputs = self.extractor(parts[start:start + size], sampling_rate=self.rate, return_tensors="pt")
                inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_features", "is_longer")}
                chunks.append(_features(self.model.get_audio_features(**inputs)).float())
        if not chunks:
            return np.zeros((0, self.dim), np.float32)
        rows = torch.nn.functional.normalize(torch.cat(chunks), dim=-1).cpu().numpy()
        out = np.zeros((len(audio), rows.shape[1]), np.float32)
        np.add.at(out, np.array(owner), rows)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import numpy as np
        import torch

        self._require_loaded()
        size = self.config.batch_size
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), size):
                inputs = self.processor.tokenizer(list(texts[start:start + size]), padding=True, truncation=True,
                                                  max_length=self.max_length, return_tensors="pt").to(self.device)
                kwargs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
                chunks.append(_features(self.model.get_text_features(**kwargs)).float())
        if not chunks:
            return np.zeros((0, self.dim), np.float32)
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1).cpu().numpy()


def _features(output: Any) -> Any:
    """transformers 5 returns an output object whose pooler_output is the projected embedding."""
    return getattr(output, "pooler_output", output)
