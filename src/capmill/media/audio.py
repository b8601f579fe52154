"""Audio decoding with hygiene: a sample's sound (or a video's soundtrack) as a mono waveform.

Every audio file is untrusted input, and the order matters as it does for images and videos:
the header is read first and checked (a sample rate and a channel count within limits, a
duration within `max_seconds`) before any sample is decoded, so a 44-byte WAV header claiming
ten hours is refused from those 44 bytes. Then only the sample's window is decoded (a clip's,
or the whole file), block by block: each block is mixed down to mono (the mean of its
channels) before the next is read, non-finite samples become 0 and values beyond ±1 are
clipped (both counted in the meta), and the mono signal is resampled to `audio.rate` with a
band-limited resampler (soxr) as it streams. Memory is the output waveform plus one block:
a 96 kHz 8-channel file costs no more than a mono one of the same window.

Decoders: libsndfile through soundfile for WAV, FLAC, Ogg (Vorbis, Opus) and MP3 (exact
seeking, no container overhead), PyAV (FFmpeg) for everything else (M4A/AAC, WebM/Opus, a
video's soundtrack) and for files libsndfile refuses. `decoder: pyav` or `soundfile` forces one.
The waveform lands in `MediaRef.audio`; facts about the source (its rate, channels, codec,
duration) in the sample's `meta["audio"]`.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from capmill.components import Strict
from capmill.errors import AudioDecodeError, NoAudioStream
from capmill.sample import AUDIO, MediaRef, Waveform

if TYPE_CHECKING:
    import numpy as np

# Frames per block read (and mixed down) at a time: 64k frames of 8 channels is 2 MB of float32.
BLOCK = 65536
# Formats libsndfile reads (by extension); others go to PyAV first.
SOUNDFILE_EXTS = frozenset({"wav", "flac", "ogg", "mp3", "aiff", "aif", "au", "caf", "w64"})


class AudioConfig(Strict):
    """The run's `audio:` section: how audio samples are decoded."""

    # Decode audio at all (text-only pipelines over audio records can turn this off).
    decode: bool = True
    # Sample rate of the mono waveform stages receive. Backends resample to their model's own
    # rate (CLAP 48 kHz, Whisper and Qwen2-Audio 16 kHz) with the same band-limited resampler;
    # 48 kHz keeps the band CLAP was trained on.
    rate: int = Field(48000, ge=8000, le=192000)
    # Longest audio accepted (read from the header; a window of a clip counts its own length).
    # Cut longer files into clips (input.clips) rather than raising this: 10 minutes of 48 kHz
    # mono is 115 MB while it is decoded.
    max_seconds: float = Field(600.0, gt=0)
    # A file over max_seconds: "refuse" it (decode_error with the reason) or "truncate" it to
    # its first max_seconds (recorded in meta["audio"]["truncated"]).
    too_long: Literal["refuse", "truncate"] = "refuse"
    # Refuse sources with more channels, or a higher sample rate, than these (header checks).
    max_channels: int = Field(32, ge=1)
    max_source_rate: int = Field(384000, ge=8000)
    # Seconds one sample's decoding may take; checked between blocks.
    timeout_s: float = Field(60.0, gt=0)
    # "auto": libsndfile for the formats it reads, PyAV (FFmpeg) for the rest and as a fallback.
    decoder: Literal["auto", "soundfile", "pyav"] = "auto"


@dataclass(slots=True)
class AudioInfo:
    """What the header says about an audio stream, and what decoding found."""

    duration: float | None  # seconds the header claims (None: not stated)
    rate: int  # the source's sample rate
    channels: int
    codec: str
    container: str
    decoder: str = ""
    non_finite: int = 0  # NaN or infinite samples replaced by 0
    clipped: int = 0  # samples beyond ±1 clipped
    truncated: bool = False

    def to_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "duration": None if self.duration is None else round(self.duration, 3), "sample_rate": self.rate,
            "channels": self.channels, "codec": self.codec, "container": self.container, "decoder": self.decoder}
        if self.non_finite:
            meta["non_finite"] = self.non_finite
        if self.clipped:
            meta["clipped"] = self.clipped
        if self.truncated:
            meta["truncated"] = True
        return meta


class _Deadline:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.perf_counter() + seconds

    def check(self) -> None:
        if time.perf_counter() > self.end:
            raise AudioDecodeError(f"decoding took longer than the limit of {self.seconds:g} s (audio.timeout_s)")


def window_of(ref: MediaRef) -> tuple[float, float | None]:
    """(start, end) seconds of `ref`'s window within its own bytes; end None: to the end."""
    if ref.clip is None:
        return 0.0, None
    return max(0.0, ref.clip.start - ref.clip.offset), max(0.0, ref.clip.end - ref.clip.offset)


def check_header(info: AudioInfo, config: AudioConfig, window: tuple[float, float | None]) -> None:
    """The hygiene limits against the header, before any sample is decoded."""
    if info.rate <= 0:
        raise AudioDecodeError("audio stream states no sample rate")
    if info.rate > config.max_source_rate:
        raise AudioDecodeError(f"sample rate of {info.rate} Hz is over the limit of {config.max_source_rate} Hz "
                               "(audio.max_source_rate)")
    if info.channels <= 0:
        raise AudioDecodeError("audio stream states no channels")
    if info.channels > config.max_channels:
        raise AudioDecodeError(f"{info.channels} channels is over the limit of {config.max_channels} "
                               "(audio.max_channels)")
    start, end = window
    length = (end - start) if end is not None else (info.duration - start if info.duration is not None else None)
    if length is not None and length <= 0:
        raise AudioDecodeError("audio has no duration (0 s)")
    if length is not None and length > config.max_seconds:
        if config.too_long == "refuse":
            raise too_long(length, config, "its window is" if end is not None else "its header claims")
        info.truncated = True


def too_long(seconds: float, config: AudioConfig, claim: str = "it holds over") -> AudioDecodeError:
    return AudioDecodeError(f"audio is too long: {claim} {seconds:.1f} s, over the limit of {config.max_seconds:g} s "
                            "(audio.max_seconds; cut it into clips with input.clips, or set audio.too_long: truncate)")


def _resampler(rate: int, target: int):
    """A streaming band-limited resampler (soxr), or None when soxr is not installed."""
    if rate == target:
        return None
    try:
        import soxr
    except ImportError:
        return None
    return soxr.ResampleStream(rate, target, 1, dtype="float32", quality="HQ")


class _Mono:
    """Collects mono blocks, cleaned and resampled as they come."""

    def __init__(self, rate: int, target: int, info: AudioInfo, deadline: _Deadline):
        self.rate, self.target, self.info, self.deadline = rate, target, info, deadline
        self.stream = _resampler(rate, target)
        self.chunks: list[np.ndarray] = []
        self.raw = 0  # source frames taken

    def add(self, block: np.ndarray, last: bool = False) -> None:
        """`block`: (frames, channels) or (frames,) float32 at the source rate."""
        import numpy as np

        self.deadline.check()
        if block.ndim == 2 and block.shape[1] > 1:
            # The mean of the channels as a matrix-vector product: BLAS reads the interleaved rows
            # at memory speed, where a reduction along the short axis crawls.
            mono = block @ np.full(block.shape[1], 1.0 / block.shape[1], np.float32)
        else:
            mono = block.reshape(-1).astype(np.float32, copy=False)
        # One pass each for the extremes; NaN fails both comparisons, so the common clean block
        # costs two reductions and the rare dirty one is cleaned and counted.
        if len(mono) and not (mono.min() >= -1.0 and mono.max() <= 1.0):
            bad = ~np.isfinite(mono)
            if bad.any():
                self.info.non_finite += int(bad.sum())
                mono = np.where(bad, np.float32(0.0), mono)
            over = np.abs(mono) > 1.0
            if over.any():
                self.info.clipped += int(over.sum())
                mono = np.clip(mono, -1.0, 1.0)
        self.raw += len(mono)
        if self.stream is not None:
            mono = self.stream.resample_chunk(mono, last=last)
        self.chunks.append(mono)

    def silence(self, seconds: float) -> None:
        """Zeros for a gap before the first decoded block (a stream that starts after the window
        does), so the waveform starts where the window starts."""
        import numpy as np

        frames = int(round(seconds * self.rate))
        if frames > 0:
            self.add(np.zeros(frames, np.float32))

    def finish(self) -> np.ndarray:
        import numpy as np

        if self.stream is not None:
            self.chunks.append(self.stream.resample_chunk(np.zeros(0, np.float32), last=True))
        if self.raw and self.info.non_finite >= self.raw:
            raise AudioDecodeError(f"every one of its {self.raw} samples is NaN or infinite")
        samples = np.concatenate(self.chunks).astype(np.float32, copy=False) if self.chunks else np.zeros(0, np.float32)
        if self.stream is None and self.rate != self.target:
            samples = resample(samples, self.rate, self.target)
        # Band-limited resampling rings a little past full scale where the source touched it.
        np.clip(samples, -1.0, 1.0, out=samples)
        # The resampler's output length can differ from the exact ratio by a sample: fix it so a
        # window's length in samples depends only on its seconds.
        want = int(round(self.raw * self.target / self.rate))
        if len(samples) > want:
            samples = samples[:want]
        elif len(samples) < want:
            samples = np.pad(samples, (0, want - len(samples)))
        return samples


def _file(ref: MediaRef) -> Any:
    """What soundfile opens: the bytes, a local path where the file lies, or fetched bytes."""
    from capmill.media.video import _is_local

    if ref.data is not None:
        if not ref.data:
            raise AudioDecodeError("empty file (0 bytes)")
        return io.BytesIO(ref.data)
    if ref.path is not None and _is_local(ref.path):
        import os

        path = ref.path.split("://", 1)[1] if "://" in ref.path else ref.path
        if os.path.getsize(path) == 0:
            raise AudioDecodeError("empty file (0 bytes)")
        return path
    data = ref.read_bytes()
    if not data:
        raise AudioDecodeError("empty file (0 bytes)")
    return io.BytesIO(data)


class AudioSource:
    """An opened audio stream: its header facts (`info`) and its samples as blocks of
    (frames, channels) float32 at the source's rate. `more` says, after `blocks` stopped at
    `end`, whether the stream went on past it."""

    info: AudioInfo
    more: bool = False

    def blocks(self, start: float, end: float | None, deadline: _Deadline) -> Iterator[np.ndarray]:
        raise NotImplementedError


class _SoundfileSource(AudioSource):
    def __init__(self, f: Any):
        self.f = f
        self.info = AudioInfo(duration=f.frames / f.samplerate if f.samplerate and f.frames else None, rate=f.samplerate,
                              channels=f.channels, codec=f.subtype.lower(), container=f.format.lower(), decoder="soundfile")

    def blocks(self, start: float, end: float | None, deadline: _Deadline) -> Iterator[np.ndarray]:
        import soundfile as sf

        f = self.f
        first = int(round(start * f.samplerate))
        stop = f.frames if end is None else min(f.frames, int(round(end * f.samplerate)))
        self.more = stop < f.frames
        try:
            if first:
                f.seek(min(first, f.frames))
            left = stop - first
            while left > 0:
                deadline.check()
                block = f.read(min(BLOCK, left), dtype="float32", always_2d=True)
                if not len(block):
                    return  # the file ends before its header says: what is there is what it holds
                left -= len(block)
                yield block
        except (sf.LibsndfileError, RuntimeError) as e:
            raise _SoundfileReadError(f"corrupt audio data: {e}") from None


class _SoundfileReadError(AudioDecodeError):
    """libsndfile failed while reading (see `with_fallback`)."""


class _PyavSource(AudioSource):
    def __init__(self, container: Any):
        if not container.streams.audio:
            if container.streams.video:
                raise NoAudioStream("no audio stream (the file holds only video)")
            raise NoAudioStream("no audio stream in the file")
        self.container = container
        self.stream = stream = container.streams.audio[0]
        ctx = stream.codec_context
        if ctx is None:
            raise AudioDecodeError("unsupported audio codec: FFmpeg has no decoder for it")
        self.tb = float(stream.time_base) if stream.time_base else None
        duration = None
        if stream.duration and self.tb:
            duration = stream.duration * self.tb
        elif container.duration and container.duration > 0:
            duration = container.duration / 1_000_000
        rate = int(ctx.sample_rate or getattr(stream, "rate", 0) or 0)
        self.info = AudioInfo(duration=duration, rate=rate, channels=int(ctx.channels or 0), codec=ctx.name or "unknown",
                              container=(container.format.name or "").split(",")[0], decoder="pyav")

    def blocks(self, start: float, end: float | None, deadline: _Deadline) -> Iterator[np.ndarray]:
        """The window's samples, from the frame that straddles `start` (trimmed) to `end`; a
        stream starting after `start` is preceded by zeros, so block time 0 is `start`."""
        import av
        import numpy as np

        stream, tb, rate = self.stream, self.tb, self.info.rate
        origin = (stream.start_time or 0) * tb if tb else 0.0
        # Planar float at the source's own rate and layout (the caller mixes down or re-encodes);
        # most decoders (AAC, MP3, Opus, Vorbis) give it as it is, the others are converted.
        converter = av.AudioResampler(format="fltp")
        position: float | None = None
        started = False
        pending: list[np.ndarray] = []  # frames gathered into blocks of about BLOCK
        held = 0
        try:
            if start > 0 and tb:
                self.container.seek(int(start / tb) + (stream.start_time or 0), stream=stream, backward=True,
                                    any_frame=False)
            for i, frame in enumerate(self.container.decode(stream)):
                if i % 32 == 0:
                    deadline.check()
                t = frame.time - origin if frame.time is not None else position
                outs = [frame] if frame.format.name == "fltp" else converter.resample(frame)
                for out in outs:
                    block = out.to_ndarray().T  # (frames, channels)
                    t0 = t if t is not None else (position or 0.0)
                    position = t0 + len(block) / rate
                    t = position
                    if position <= start:
                        continue
                    if t0 < start:  # the block straddles the window's start
                        block = block[int(round((start - t0) * rate)):]
                    elif not started and t0 - start > 0.5 / rate:
                        pending.append(np.zeros((int(round((t0 - start) * rate)), block.shape[1]), np.float32))
                    started = True
                    if end is not None and position > end:
                        block = block[: max(0, int(round((end - max(t0, start)) * rate)))]
                        self.more = True
                    if len(block):
                        pending.append(block)
                        held += len(block)
                    if held >= BLOCK:
                        yield np.concatenate(pending).astype(np.float32, copy=False)
                        pending, held = [], 0
                if end is not None and position is not None and position >= end:
                    self.more = self.more or position > end
                    break
            if pending:
                yield np.concatenate(pending).astype(np.float32, copy=False)
        except av.error.FFmpegError as e:
            raise AudioDecodeError(f"corrupt audio data: {getattr(e, 'strerror', None) or e}") from None
        except ValueError as e:  # a stream whose layout or rate changes midway
            raise AudioDecodeError(f"unusable audio stream: {e}") from None


@contextmanager
def open_audio(ref: MediaRef, decoder: str = "auto") -> Iterator[AudioSource]:
    """`ref` opened for reading by libsndfile where it reads the format (see SOUNDFILE_EXTS),
    else by PyAV; AudioDecodeError naming the reason when neither reads it."""
    ext = (ref.ext or "").lower()
    first = "soundfile" if decoder == "soundfile" or (decoder == "auto" and (ext in SOUNDFILE_EXTS or not ext)) else "pyav"
    if first == "soundfile":
        try:
            import soundfile as sf
        except ImportError:
            if decoder == "soundfile":
                raise AudioDecodeError("audio.decoder soundfile needs the soundfile package "
                                       "(`pip install 'capmill[audio]'`)") from None
            sf = None
        if sf is not None:
            try:
                f = sf.SoundFile(_file(ref))
            except (sf.LibsndfileError, RuntimeError, TypeError) as e:
                if decoder == "soundfile":
                    raise AudioDecodeError(f"not a readable audio file: {e}") from None
            else:
                with f:
                    yield _SoundfileSource(f)
                return
    from capmill.media.video import open_container

    try:
        with open_container(ref, AudioDecodeError, "audio") as container:
            yield _PyavSource(container)
    except AudioDecodeError as e:
        if first == "soundfile" and e.reason.startswith("not a readable audio container"):
            raise AudioDecodeError("unsupported or corrupt audio: neither libsndfile nor FFmpeg reads it "
                                   f"({e.reason.split(': ', 1)[-1]})") from None
        raise


def with_fallback(ref: MediaRef, decoder: str, work: Any) -> Any:
    """`work(source)` on `ref` opened by `open_audio`; with `decoder: auto`, a read that
    libsndfile fails midway (its FLAC reader errs past the data when the header claims more) is
    done again by PyAV, which reads what is there."""
    try:
        with open_audio(ref, decoder) as source:
            return work(source)
    except _SoundfileReadError as e:
        if decoder != "auto":
            raise AudioDecodeError(e.reason) from None
    with open_audio(ref, "pyav") as source:
        return work(source)


def decode_audio(ref: MediaRef, config: AudioConfig) -> tuple[Waveform, AudioInfo]:
    """The mono waveform of `ref`'s window at `config.rate`, with hygiene; AudioDecodeError
    (with the reason) when the audio is refused, corrupt, or holds no samples."""
    deadline = _Deadline(config.timeout_s)
    window = window_of(ref)

    def work(source: AudioSource) -> tuple[np.ndarray, AudioInfo]:
        info = source.info
        check_header(info, config, window)
        start, end = window
        # Reading stops at the window's end, or max_seconds from its start (a stream whose header
        # states no duration, or states less than it holds, is measured as it is read).
        cap = start + config.max_seconds
        stop = min(end, cap) if end is not None else cap
        if end is None and info.duration is not None and info.decoder == "pyav":
            # Codec padding (AAC's last frame) decodes past the stated length: the header's
            # duration is what the file holds. Reading stops there, or at the cap.
            stop = min(stop, max(info.duration, start))
        mono = _Mono(info.rate, config.rate, info, deadline)
        for block in source.blocks(start, stop, deadline):
            mono.add(block)
        if source.more and stop >= cap and (end is None or end > cap):
            if config.too_long == "refuse":
                raise too_long(config.max_seconds, config)
            info.truncated = True
        return mono.finish(), info

    samples, info = with_fallback(ref, config.decoder, work)
    if not len(samples):
        raise AudioDecodeError("no audio samples in this window (empty or truncated stream)")
    return Waveform(samples=samples, rate=config.rate), info


def decode_soundtrack(ref: MediaRef, rate: int = 16000, max_seconds: float = 4 * 3600.0,
                      timeout_s: float = 600.0) -> Waveform:
    """The first audio stream of a video `ref` within its window (a clip's, or all of it), mono
    float32 at `rate` Hz; NoAudioStream when the video has no sound, AudioDecodeError when the
    soundtrack cannot be decoded."""
    config = AudioConfig(rate=rate, max_seconds=max_seconds, timeout_s=timeout_s, decoder="pyav")
    try:
        wave, _ = decode_audio(ref, config)
    except NoAudioStream:
        raise NoAudioStream("no audio stream (the video has no sound)") from None
    return wave


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """`samples` from `rate` to `target` Hz with soxr's band-limited resampler (linear
    interpolation when soxr is not installed, which aliases when it lowers the rate)."""
    import numpy as np

    samples = np.asarray(samples, dtype=np.float32)
    if rate == target or len(samples) == 0:
        return samples
    try:
        import soxr
    except ImportError:
        n = int(round(len(samples) * target / rate))
        return np.interp(np.arange(n) * rate / target, np.arange(len(samples)), samples).astype(np.float32)
    return soxr.resample(samples, rate, target, quality="HQ").astype(np.float32, copy=False)


def at_rate(wave: Waveform, rate: int) -> np.ndarray:
    """The samples of `wave` at `rate` Hz (resampled when it is at another)."""
    return wave.samples if wave.rate == rate else resample(wave.samples, wave.rate, rate)


def soundtrack(ref: MediaRef, rate: int = 16000, **limits) -> Waveform:
    """`ref.audio` at `rate` when it is decoded (an audio sample), else the decoded soundtrack of
    a video (kept there)."""
    if ref.audio is not None:
        if ref.audio.rate == rate:
            return ref.audio
        if ref.kind == AUDIO:
            return Waveform(samples=at_rate(ref.audio, rate), rate=rate, start=ref.audio.start)
    if ref.kind == AUDIO:
        wave, _ = decode_audio(ref, AudioConfig(rate=rate, **{k: v for k, v in limits.items() if k in ("max_seconds", "timeout_s")}))
        ref.audio = wave
        return wave
    ref.audio = decode_soundtrack(ref, rate, **limits)
    return ref.audio


def audio_input(sample: Any) -> Any:
    """The `AudioInput` a backend receives for a decoded audio sample."""
    from capmill.backends.base import AudioInput

    wave = sample.media.audio
    return AudioInput(samples=wave.samples, rate=wave.rate, seconds=wave.seconds, data=sample.media.data,
                      ext=sample.media.ext, path=sample.media.path)


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """A mono waveform as a 16-bit PCM WAV file (what OpenAI-compatible servers take as
    `input_audio`)."""
    import wave

    import numpy as np

    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()
