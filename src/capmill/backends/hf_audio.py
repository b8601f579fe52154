"""What the transformers backend needs to drive audio-language models (Qwen2-Audio and its kin).

transformers registers audio-text-to-text models (Qwen2-Audio, Voxtral, Granite Speech, …)
under `AutoModelForMultimodalLM`; their processor pairs a tokenizer with a feature extractor
(Whisper's log-mel for Qwen2-Audio) that takes waveforms at its own `sampling_rate`, and their
chat template places an audio part (`{"type": "audio"}`) as the audio placeholder the processor
expands. A request's waveform arrives at the run's `audio.rate` and is resampled here with the
same band-limited resampler the decode step uses.
"""

from __future__ import annotations

from typing import Any


def is_audio_language(hf_config: Any) -> bool:
    """Whether a model config belongs to an audio-language model that is not also a
    vision-language one (those load as vision-language models and may take audio too)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
        MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES,
    )

    kind = hf_config.model_type
    return kind in MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def model_class() -> Any:
    from transformers import AutoModelForMultimodalLM

    return AutoModelForMultimodalLM


def feature_extractor(processor: Any) -> Any:
    """The processor's audio feature extractor, or None."""
    return getattr(processor, "feature_extractor", None) or getattr(processor, "audio_processor", None)


def sampling_rate(processor: Any) -> int:
    return int(getattr(feature_extractor(processor), "sampling_rate", 16000) or 16000)


def longest_seconds(processor: Any) -> float | None:
    """Seconds of audio the feature extractor keeps (Whisper's: 30); None when it does not say."""
    extractor = feature_extractor(processor)
    seconds = getattr(extractor, "chunk_length", None)
    return float(seconds) if seconds else None


def places_audio(apply_template: Any, processor: Any) -> bool:
    """Whether the processor has a feature extractor and the chat template places an audio part
    as the processor's audio token."""
    token = getattr(processor, "audio_token", None)
    if feature_extractor(processor) is None or not token:
        return False
    try:
        probe = apply_template([{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "x"}]}])
    except Exception:  # templates raise their own errors (jinja, missing keys) on parts they do not know
        return False
    return token in probe


def audio_kwargs(processor: Any, audios: list[Any]) -> dict[str, Any]:
    """Processor keywords for the requests' audio (`AudioInput`s), at the feature extractor's rate."""
    from capmill.media.audio import resample

    rate = sampling_rate(processor)
    return {"audio": [resample(a.samples, a.rate, rate) for a in audios], "sampling_rate": rate}
