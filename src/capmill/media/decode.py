"""The decode step of every executor: read a sample's bytes, decode with hygiene, record failures.

A sample whose bytes cannot be read becomes `read_error`, one whose bytes are not acceptable
media `decode_error`; either way it keeps its row and the batch goes on. Images are decoded to
one RGB image (`ImageConfig`), videos to the frames their sampling asks for (`VideoConfig`, the
run's `video:` section, which the run config attaches to the image config this step is given),
audio to a mono waveform at the run's rate (`AudioConfig`, the `audio:` section, attached the
same way).
"""

from __future__ import annotations

import time

from capmill.errors import SampleError
from capmill.media.image import ImageConfig, decode_image, prepare_image
from capmill.sample import AUDIO, DECODE_ERROR, READ_ERROR, VIDEO, Sample


def decode_batch(batch: list[Sample], config: ImageConfig) -> float:
    """Decode every sample's media in place; failures become the sample's status. Returns seconds spent."""
    start = time.perf_counter()
    video, audio = config.video, config.audio
    for sample in batch:
        if sample.media.kind == VIDEO:
            if video.decode:
                decode_video_one(sample, video)
        elif sample.media.kind == AUDIO:
            if audio.decode:
                decode_audio_one(sample, audio)
        elif config.decode:
            decode_one(sample, config)
    return time.perf_counter() - start


def decode_one(sample: Sample, config: ImageConfig) -> None:
    if not sample.ok:
        return
    ref = sample.image
    if ref.data is None and ref.path is None and ref.url is None:
        if ref.image is None:
            sample.fail(DECODE_ERROR, "sample has no image")
            return
        try:  # handed over decoded (the Python API): the same checks and normalisation
            ref.image = prepare_image(ref.image, config)
        except SampleError as e:
            sample.fail(e.status, e.reason)
        return
    try:
        data = ref.read_bytes()
    except SampleError as e:  # a refused or failed download: its reason already names the URL
        sample.fail(e.status, e.reason)
        return
    except Exception as e:  # file systems raise their own types (HTTP, S3 clients)
        sample.fail(READ_ERROR, f"could not read image {ref.path or ref.url}: {type(e).__name__}: {e}")
        return
    try:
        ref.image = decode_image(data, config)
    except SampleError as e:
        sample.fail(e.status, e.reason)
    else:
        sample.meta.setdefault("decoded_size", list(ref.image.size))


def decode_video_one(sample: Sample, config) -> None:
    """Sample a video's frames into `sample.media.frames`; its header facts go to meta["video"]."""
    from capmill.media.video import decode_video

    if not sample.ok:
        return
    ref = sample.media
    if ref.data is None and ref.path is None and ref.url is None:
        sample.fail(DECODE_ERROR, "sample has no video")
        return
    decoded = _decoded(sample, "video", decode_video, config)
    if decoded is None:
        return
    frames, info = decoded
    ref.frames = frames
    facts = _facts(sample, "video", info)
    facts["sampled"] = len(frames)
    facts["decoded_size"] = list(frames[0].image.size)
    sample.meta["video"] = facts


def decode_audio_one(sample: Sample, config) -> None:
    """Decode an audio sample's window into `sample.media.audio`; the source's facts go to meta["audio"]."""
    from capmill.media.audio import decode_audio

    if not sample.ok:
        return
    ref = sample.media
    if ref.data is None and ref.path is None and ref.url is None:
        if ref.audio is not None:  # handed over decoded (the Python API)
            return
        sample.fail(DECODE_ERROR, "sample has no audio")
        return
    decoded = _decoded(sample, "audio", decode_audio, config)
    if decoded is None:
        return
    wave, info = decoded
    ref.audio = wave
    facts = _facts(sample, "audio", info)
    facts["seconds"] = round(wave.seconds, 3)
    facts["rate"] = wave.rate
    sample.meta["audio"] = facts


def _decoded(sample: Sample, kind: str, decode, config):
    """`decode(sample.media, config)`, or None with the sample failed for the reason: the
    decoder's own status, or read_error when the path or URL could not be read."""
    ref = sample.media
    try:
        return decode(ref, config)
    except SampleError as e:
        sample.fail(e.status, e.reason)
    except (OSError, ValueError) as e:  # reading a path or URL failed (file systems raise their own types)
        sample.fail(READ_ERROR, f"could not read {kind} {ref.path or ref.url}: {type(e).__name__}: {e}")
    return None


def _facts(sample: Sample, kind: str, info) -> dict:
    """The media's facts for meta[kind]: a clip's reader noted its source's (source_*); the
    header facts are the clip's own."""
    facts = {k: v for k, v in (sample.meta.get(kind) or {}).items() if k.startswith("source_")}
    facts.update(info.to_meta())
    return facts
