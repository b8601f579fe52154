"""Long audio as clips: fixed windows, each its own sample, cut at read time as for videos.

`input.clips` makes a reader yield, for every audio file, one sample per window of
`clips.seconds` (a last window shorter than `clips.min_seconds` joins the one before; `by:
scenes` is a picture notion, so audio is cut in fixed windows whatever it says). A clip's bytes
are its window's samples, exactly, at the source's own rate and channels, written as FLAC
(lossless; 16-bit for 16-bit and lossy sources, 24-bit for deeper or float ones; WAV for more
than FLAC's 8 channels; NaN samples become 0, a window of nothing but NaN is refused). Audio frames hold no keyframes to cut at and lossy codecs prime their
decoders, so a stream copy would start off the window; re-encoding the window's samples makes
every clip start and end where it says (`Clip.offset` = its start) and keeps memory to one clip
and one block. libsndfile writes the same bytes for the same samples, so a resumed run writes
the same clips under the same keys (`SOURCE_clipNNNN`, as for videos).
"""

from __future__ import annotations

import io
from typing import Any

from capmill.errors import AudioDecodeError
from capmill.media.audio import (
    AudioConfig,
    _Deadline,
    check_header,
    open_audio,
    with_fallback,
)
from capmill.media.sampling import clip_windows
from capmill.sample import MediaRef

# Source sample formats worth 24 bits in a clip; everything else (16-bit PCM, lossy codecs) is 16.
_DEEP = ("pcm_24", "pcm_32", "float", "double", "pcm_s24", "pcm_s32", "pcm_f32", "pcm_f64", "flt", "dbl")
FLAC_MAX_CHANNELS = 8


def plan(ref: MediaRef, config: Any) -> tuple[list[tuple[float, float]], dict[str, Any]]:
    """The clip windows of the audio `ref` under `config` (a ClipConfig), and its facts for the
    clips' meta. The length is the header's when the stream really reaches it, else it is
    measured by reading (a header claiming hours over a second of data would otherwise become
    thousands of empty clips)."""
    deadline = _Deadline(config.timeout_s)
    limits = AudioConfig(max_seconds=config.max_source_seconds, timeout_s=config.timeout_s)
    with open_audio(ref) as source:
        info = source.info
        check_header(info, limits, (0.0, None))
        duration = info.duration
        if duration is not None and not _reaches(source, duration, deadline):
            duration = None

    def measure(source: Any) -> float:
        frames = sum(len(b) for b in source.blocks(0.0, config.max_source_seconds, deadline))
        if source.more:
            raise AudioDecodeError(f"audio is over the limit of {config.max_source_seconds:g} s "
                                   "(input.clips.max_source_seconds)")
        return frames / source.info.rate

    if duration is None:  # the stream does not say, or says more than it holds: count its samples
        duration = with_fallback(ref, "auto", measure)
    windows = clip_windows(duration, config.seconds, config.min_seconds)
    facts: dict[str, Any] = {"duration": round(duration, 3), "clips": len(windows)}
    if info.duration is not None and abs(info.duration - duration) > 0.5:
        facts["duration_claimed"] = round(info.duration, 3)
    if len(windows) > config.max_clips:
        facts["clips_left_out"] = len(windows) - config.max_clips
        windows = windows[: config.max_clips]
    return windows, facts


def _reaches(source: Any, duration: float, deadline: _Deadline) -> bool:
    """Whether the stream holds samples in the last half second its header claims."""
    try:
        return any(len(b) for b in source.blocks(max(0.0, duration - 0.5), duration, deadline))
    except AudioDecodeError:  # a seek past the data (libsndfile refuses it)
        return False


def cut(ref: MediaRef, start: float, end: float, timeout_s: float = 600.0) -> tuple[bytes, str]:
    """The samples of [start, end) of `ref` as a new file at the source's rate and channels;
    returns its bytes and extension ("flac", or "wav" beyond 8 channels)."""
    import numpy as np
    import soundfile as sf

    deadline = _Deadline(timeout_s)

    def work(source: Any) -> tuple[bytes, str, int]:
        info = source.info
        bad = 0
        deep = info.codec.lower().startswith(_DEEP)
        if info.channels > FLAC_MAX_CHANNELS:
            fmt, ext, subtype = "WAV", "wav", "PCM_24" if deep else "PCM_16"
        else:
            fmt, ext, subtype = "FLAC", "flac", "PCM_24" if deep else "PCM_16"
        buf = io.BytesIO()
        written = 0
        with sf.SoundFile(buf, "w", samplerate=info.rate, channels=info.channels, format=fmt, subtype=subtype) as out:
            for block in source.blocks(start, end, deadline):
                finite = np.isfinite(block).all(axis=1)
                bad += int((~finite).sum())
                block = np.nan_to_num(block, nan=0.0, posinf=1.0, neginf=-1.0)
                out.write(np.clip(block, -1.0, 1.0))
                written += len(block)
        if written and bad == written:  # nothing to hear: the clip would be silence standing in for it
            raise AudioDecodeError(f"every one of its {written} samples is NaN or infinite")
        return buf.getvalue(), ext, written

    data, ext, written = with_fallback(ref, "auto", work)
    if not written:
        raise AudioDecodeError(f"no audio samples between {start:.2f} and {end:.2f} s")
    return data, ext
