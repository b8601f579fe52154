"""Audio decoding: a media's sound as a mono waveform at the rate a model wants.

Today this decodes a video's soundtrack (speech recognition for HowToCaption); audio samples
(`kind: audio`) decode here too once readers accept them. The waveform lands in
`MediaRef.audio`, the one place decoded sound is kept. Decoding resamples and mixes down to
mono in FFmpeg's resampler as it goes, so memory is the output waveform only (4 bytes a sample:
an hour at 16 kHz is 230 MB), bounded by `max_seconds`.
"""

from __future__ import annotations

import numpy as np

from capmill.errors import AudioDecodeError, NoAudioStream
from capmill.sample import MediaRef, Waveform


def decode_soundtrack(ref: MediaRef, rate: int = 16000, max_seconds: float = 4 * 3600.0,
                      timeout_s: float = 600.0) -> Waveform:
    """The first audio stream of `ref` within its window (a clip's, or all of it), mono float32
    at `rate` Hz; AudioDecodeError when there is none or it cannot be decoded."""
    import av

    from capmill.media.video import Deadline, open_container

    deadline = Deadline(timeout_s)
    start, end = 0.0, None
    if ref.clip is not None:
        start, end = max(0.0, ref.clip.start - ref.clip.offset), max(0.0, ref.clip.end - ref.clip.offset)
    try:
        with open_container(ref) as container:
            if not container.streams.audio:
                raise NoAudioStream("no audio stream (the video has no sound)")
            stream = container.streams.audio[0]
            tb = float(stream.time_base) if stream.time_base else None
            origin = (stream.start_time or 0) * tb if tb else 0.0
            if stream.duration and tb and stream.duration * tb > max_seconds and ref.clip is None:
                raise AudioDecodeError(f"soundtrack is {stream.duration * tb:.0f} s long, over the limit of "
                                       f"{max_seconds:g} s")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks: list[np.ndarray] = []
            first: float | None = None
            total = 0
            for i, frame in enumerate(container.decode(stream)):
                if i % 64 == 0:
                    deadline.check("decoding the soundtrack")
                t = frame.time - origin if frame.time is not None else None
                if t is not None and end is not None and t >= end:
                    break
                for out in resampler.resample(frame):
                    arr = out.to_ndarray().reshape(-1)
                    if first is None:
                        first = t if t is not None else 0.0
                    chunks.append(arr)
                    total += len(arr)
                if total > max_seconds * rate:
                    raise AudioDecodeError(f"soundtrack is over the limit of {max_seconds:g} s")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as e:
        raise AudioDecodeError(f"corrupt audio data: {getattr(e, 'strerror', None) or e}") from None
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if first is not None and first < start:  # drop what precedes the window (a clip starts at a keyframe)
        samples = samples[int(round((start - first) * rate)):]
        first = start
    if end is not None:
        samples = samples[: max(0, int(round((end - (first or start)) * rate)))]
    if not len(samples):
        raise AudioDecodeError("the soundtrack holds no samples in this window")
    return Waveform(samples=samples, rate=rate, start=max(0.0, (first or start) - start))


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Linear-interpolation resampling, for waveforms that arrive at another rate than a model's
    (decoding itself resamples with FFmpeg's resampler)."""
    if rate == target or len(samples) == 0:
        return samples.astype(np.float32)
    n = int(round(len(samples) * target / rate))
    return np.interp(np.arange(n) * rate / target, np.arange(len(samples)), samples).astype(np.float32)


def soundtrack(ref: MediaRef, rate: int = 16000, **limits) -> Waveform:
    """`ref.audio` when it is already decoded at `rate`, else the decoded soundtrack (kept there)."""
    if ref.audio is None or ref.audio.rate != rate:
        ref.audio = decode_soundtrack(ref, rate, **limits)
    return ref.audio
