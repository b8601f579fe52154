"""The OpenAI chat-completions wire format as capmill speaks it: the messages and sampling fields
of a request (images, a video or an audio clip inlined as base64), the reading of an answer, and
which HTTP outcomes are worth another attempt (`RETRY_STATUS`, `Retry-After`, backoff with
jitter). The transport and its retry loop are `capmill.backends.openai_http`."""

from __future__ import annotations

import base64
import email.utils
import io
import random
import time
from typing import TYPE_CHECKING, Any

from capmill.backends.base import GenerationParams, VLMRequest
from capmill.backends.common import fit_pixel_budget, neutralise_for
from capmill.media.image import to_rgb

if TYPE_CHECKING:
    from PIL import Image

# Answers worth another attempt: rate limits, request timeouts and server-side failures.
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


# Answers not worth an immediate retry that still say nothing about the request itself.
TRANSIENT_STATUS = frozenset({401, 403, 404})


class RetryableError(Exception):
    """Worth another attempt: the server failed or the answer did not arrive whole."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class MalformedError(RetryableError):
    """The answer is not a chat completion (a body cut off mid-transfer, a proxy's error page)."""


class TransientError(Exception):
    """Not worth retrying now, but not the request's fault either (key, served model)."""


class FinalError(Exception):
    """The server answered, and asking again would give the same answer."""


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds: either delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(retry: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, so retries of many
    requests that failed together spread out instead of hitting the server in step."""
    ceiling = min(cap, base * (2 ** retry))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def sampling_fields(params: GenerationParams, max_tokens_field: str = "max_tokens") -> dict[str, Any]:
    """GenerationParams → chat-completions body fields. `repetition_penalty` is a vLLM/SGLang
    extension and is only sent when set. Beam search is not part of the API: `num_beams` is not
    sent, so a beam request decodes greedily (or samples, at its temperature) and the
    Generation's meta records `beams_ignored`."""
    body: dict[str, Any] = {max_tokens_field: params.max_new_tokens, "temperature": params.temperature,
                            "top_p": params.top_p}
    if params.seed is not None:
        body["seed"] = params.seed
    if params.repetition_penalty is not None:
        body["repetition_penalty"] = params.repetition_penalty
    return body


def image_data_url(image: Image.Image, fmt: str = "jpeg", quality: int = 90, max_pixels: int | None = None) -> str:
    """A decoded image as a base64 data URL, downscaled to `max_pixels` when it is larger."""
    img = fit_pixel_budget(to_rgb(image) if fmt == "jpeg" else image, max_pixels)
    buf = io.BytesIO()
    img.save(buf, format=fmt.upper(), **({"quality": quality} if fmt in ("jpeg", "webp") else {}))
    return f"data:image/{fmt};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


_VIDEO_MIME = {"mp4": "video/mp4", "mov": "video/quicktime", "webm": "video/webm", "mkv": "video/x-matroska"}


def video_data_url(video: Any, max_bytes: int) -> str:
    """A video file as a base64 data URL (ValueError when it is over `max_bytes`)."""
    data = video.file_bytes()
    if len(data) > max_bytes:
        raise ValueError(f"video of {len(data)} bytes is over max_video_bytes ({max_bytes}); cut it into clips "
                         "(input.clips) or send frames (video_as: frames)")
    mime = _VIDEO_MIME.get((video.ext or "mp4").lower(), "video/mp4")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def input_audio(audio: Any, rate: int, max_bytes: int) -> dict[str, Any]:
    """An `input_audio` content part: the request's waveform as a base64 16-bit mono WAV at
    `rate` Hz (ValueError when it is over `max_bytes`)."""
    from capmill.media.audio import resample, wav_bytes

    data = wav_bytes(resample(audio.samples, audio.rate, rate), rate)
    if len(data) > max_bytes:
        raise ValueError(f"audio of {len(data)} bytes as WAV is over max_audio_bytes ({max_bytes}); cut it into clips "
                         "(input.clips)")
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode("ascii"), "format": "wav"}}


def vlm_messages(request: VLMRequest, image_urls: list[str], special_tokens: list[str] | tuple = (),
                 video_url: str | None = None, audio_part: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The audio, video or images first, then the prompt, in one user turn: the order most
    multimodal chat templates were trained with. Texts have special-token shapes neutralised."""
    content: list[dict[str, Any]] = [audio_part] if audio_part else []
    content += [{"type": "video_url", "video_url": {"url": video_url}}] if video_url else []
    content += [{"type": "image_url", "image_url": {"url": u}} for u in image_urls]
    content.append({"type": "text", "text": neutralise_for(request.prompt, special_tokens)})
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": neutralise_for(request.system, special_tokens)})
    messages.append({"role": "user", "content": content})
    return messages


def parse_completion(payload: Any) -> tuple[list[str], list[str | None], dict[str, int]]:
    """Texts, finish reasons and usage of a chat-completions answer; MalformedError when it is
    not one, FinalError when the model refused."""
    if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list) or not payload["choices"]:
        raise MalformedError("malformed response: no choices")
    texts, reasons = [], []
    for choice in payload["choices"]:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise MalformedError("malformed response: a choice has no message")
        if message.get("refusal"):
            raise FinalError(f"refused: {str(message['refusal'])[:200]}")
        if choice.get("finish_reason") == "content_filter":
            raise FinalError("refused: the server's content filter stopped the answer")
        content = message.get("content")
        if not isinstance(content, str):
            raise MalformedError("malformed response: message content is not text")
        texts.append(content)
        reasons.append(choice.get("finish_reason"))
    usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
    return texts, reasons, {k: v for k, v in usage.items() if k in ("prompt_tokens", "completion_tokens") and isinstance(v, int)}
