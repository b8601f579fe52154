"""Video decoding with hygiene: every video is untrusted input.

The order matters, as for images: the container header is read first and the stream checked
(a video stream exists, its codec is allowed, its resolution, duration and frame count are
within limits) before any frame is decoded; a header claiming 100,000 frames at 8K is refused
from a few hundred bytes. Then only the frames the sampling asks for are decoded: the decoder
seeks to the keyframe before each wanted timestamp when that skips frames, and decodes forward
otherwise (see `FrameSeeker`), converting just the chosen frames to RGB at `max_side`. Memory
is bounded by the frames sampled, not by the video's length; decoding time by `timeout_s`.

A clip sample (`MediaRef.clip`) is decoded within its window only. Timestamps are seconds from
the start of the sample's window.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from capmill.components import Strict
from capmill.errors import MediaDecodeError, VideoDecodeError
from capmill.media.sampling import SamplingConfig, sample_times
from capmill.sample import Frame, MediaRef

# Codecs a video stream may use. rawvideo and image codecs inside containers are left out: they
# are how a small file claims enormous frames, and no camera or web video uses them.
ALLOWED_CODECS = ["h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg2video", "mpeg1video", "mjpeg", "prores", "theora"]
# How close (seconds) a decoded frame must be to a wanted time for the wanted time to count as
# reached at the end of a stream; further means the file ends early (truncated).
END_TOLERANCE = 1.0


class VideoConfig(Strict):
    # Decode videos at all (text-only pipelines over video records can turn this off).
    decode: bool = True
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    # Refuse longer videos (read from the header). Cut long videos into clips (input.clips)
    # rather than raising this: a clip sample is checked against its own length.
    max_seconds: float = Field(4 * 3600.0, gt=0)
    # Refuse videos with larger frames (width × height from the header); 4K by default.
    max_pixels: int = Field(3840 * 2160, ge=1)
    # Refuse videos whose header claims more frames than this.
    max_frames: int = Field(1_000_000, ge=1)
    # Codec names (FFmpeg's) accepted for the video stream.
    codecs: list[str] = Field(default_factory=lambda: list(ALLOWED_CODECS))
    # Longest side of the sampled frames. Video models take a few hundred pixels per frame; this
    # bounds memory per sample at about max_frames × max_side² × 3 bytes.
    max_side: int | None = Field(448, ge=16)
    # Seconds one sample's decoding may take (probing, keyframe scan, scene detection, frames);
    # checked between frames, so one pathological frame can overrun it by its own decode time.
    timeout_s: float = Field(120.0, gt=0)
    # Decoder threads per video; the decode pool already runs several videos at once.
    threads: int = Field(1, ge=0)


@dataclass(slots=True)
class VideoInfo:
    """What the header says about a video stream (and what decoding found)."""

    duration: float | None
    fps: float | None
    width: int
    height: int
    codec: str
    frames: int | None  # frame count the header claims
    audio: bool  # an audio stream is present
    container: str

    def to_meta(self) -> dict[str, Any]:
        return {"duration": None if self.duration is None else round(self.duration, 3),
                "fps": None if self.fps is None else round(self.fps, 3), "width": self.width,
                "height": self.height, "codec": self.codec, "frames": self.frames, "audio": self.audio,
                "container": self.container}


class Deadline:
    """`timeout_s` from now; `check` raises VideoDecodeError once it has passed."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.perf_counter() + seconds

    def check(self, doing: str) -> None:
        if time.perf_counter() > self.end:
            raise VideoDecodeError(f"decoding took longer than the limit of {self.seconds:g} s (while {doing}); "
                                   "raise video.timeout_s or sample fewer frames")


def _reason(error: Exception) -> str:
    """FFmpeg's words for an error, without the file name PyAV appends ('<none>' for bytes)."""
    return getattr(error, "strerror", None) or str(error)


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith(("file://", "local://"))


@contextmanager
def open_container(ref: MediaRef, error: type[MediaDecodeError] = VideoDecodeError, what: str = "video") -> Iterator[Any]:
    """An opened PyAV input container for `ref`: its bytes when it has them, a local file read
    where it lies (never loaded whole), anything else fetched first (`read_bytes`). Failures
    raise `error` (audio decoding passes its own type and `what`)."""
    import av

    if ref.data is not None:
        if not ref.data:
            raise error("empty file (0 bytes)")
        source: Any = io.BytesIO(ref.data)
    elif ref.path is not None and _is_local(ref.path):
        import os

        path = ref.path.split("://", 1)[1] if "://" in ref.path else ref.path
        if os.path.getsize(path) == 0:
            raise error("empty file (0 bytes)")
        source = path
    else:
        data = ref.read_bytes()
        if not data:
            raise error("empty file (0 bytes)")
        source = io.BytesIO(data)
    try:
        container = av.open(source, mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise error(f"not a readable {what} container: {_reason(e)}") from None
    except (OSError, ValueError) as e:
        raise error(f"not a readable {what} container: {type(e).__name__}: {e}") from None
    try:
        yield container
    finally:
        container.close()


def stream_info(container: Any) -> tuple[Any, VideoInfo]:
    """The first video stream and what its header says; VideoDecodeError when there is none."""
    videos = list(container.streams.video)
    audios = list(container.streams.audio)
    if not videos:
        if audios:
            raise VideoDecodeError(f"no video stream: the file holds only audio ({len(audios)} audio stream"
                                   f"{'s' if len(audios) > 1 else ''})")
        raise VideoDecodeError("no video stream in the file")
    stream = videos[0]
    ctx = stream.codec_context
    tb = stream.time_base
    duration = None
    if stream.duration is not None and tb is not None and stream.duration > 0:
        duration = float(stream.duration * tb)
    elif container.duration is not None and container.duration > 0:
        duration = container.duration / 1_000_000
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else None
    frames = stream.frames or None
    if duration is None and frames and fps:
        duration = frames / fps
    info = VideoInfo(duration=duration, fps=fps, width=int(ctx.width or 0), height=int(ctx.height or 0),
                     codec=ctx.name or "unknown", frames=frames, audio=bool(audios),
                     container=(container.format.name or "").split(",")[0])
    return stream, info


def check_header(info: VideoInfo, config: VideoConfig, window: tuple[float, float] | None = None) -> None:
    """The hygiene limits against the header, before any frame is decoded."""
    if info.codec not in config.codecs:
        raise VideoDecodeError(f"video codec {info.codec} not allowed (allowed: {', '.join(config.codecs)})")
    if info.width <= 0 or info.height <= 0:
        raise VideoDecodeError(f"video stream has an empty size {info.width}x{info.height}")
    pixels = info.width * info.height
    if pixels > config.max_pixels:
        raise VideoDecodeError(f"video is {info.width}x{info.height} = {pixels} pixels per frame, over the limit "
                               f"of {config.max_pixels} (video.max_pixels)")
    if info.frames is not None and info.frames > config.max_frames:
        raise VideoDecodeError(f"video header claims {info.frames} frames, over the limit of {config.max_frames} "
                               "(video.max_frames)")
    length = (window[1] - window[0]) if window is not None else info.duration
    if length is not None and length > config.max_seconds:
        raise VideoDecodeError(f"video is {length:.1f} s long, over the limit of {config.max_seconds:g} s "
                               "(video.max_seconds; or cut it into clips with input.clips)")


class StreamClock:
    """Seconds from the start of a stream ↔ its timestamps."""

    def __init__(self, stream: Any):
        self.tb = float(stream.time_base) if stream.time_base else None
        self.start = stream.start_time if stream.start_time is not None else 0
        rate = (getattr(stream, "average_rate", None) or getattr(stream, "guessed_rate", None)) if stream.type == "video" else None
        self.period = 1.0 / float(rate) if rate else 0.04

    def seconds(self, pts: int | None) -> float | None:
        if pts is None or self.tb is None:
            return None
        return (pts - self.start) * self.tb

    def pts(self, seconds: float) -> int:
        return self.start + int(math.floor(seconds / self.tb)) if self.tb else 0


def keyframe_times(container: Any, stream: Any, clock: StreamClock, deadline: Deadline) -> list[float]:
    """Keyframe timestamps: from the container's index where it has one (MP4/MOV keep every
    sample's flags in the header), else from a scan of the packets (no decoding), after which
    the container is rewound."""
    times = []
    try:
        entries = stream.index_entries
        times = sorted({clock.seconds(e.timestamp) for e in entries if e.is_keyframe})
    except (AttributeError, TypeError):
        times = []
    if len(times) > 1 or (times and len(stream.index_entries) > 1 and all(e.is_keyframe for e in stream.index_entries)):
        return [t for t in times if t is not None]
    found = []
    for i, packet in enumerate(container.demux(stream)):
        if i % 256 == 0:
            deadline.check("scanning for keyframes")
        if packet.is_keyframe and packet.pts is not None:
            found.append(clock.seconds(packet.pts))
    container.seek(clock.start, stream=stream, backward=True, any_frame=False)
    return sorted(t for t in found if t is not None)


def stream_end(container: Any, stream: Any, clock: StreamClock, config: VideoConfig, deadline: Deadline) -> float:
    """The stream's length from a packet scan, for containers that do not state it."""
    last = 0.0
    for i, packet in enumerate(container.demux(stream)):
        if i % 256 == 0:
            deadline.check("measuring a stream without a stated duration")
        t = clock.seconds(packet.pts)
        if t is not None:
            last = max(last, t + clock.period)
            if last > config.max_seconds:
                raise VideoDecodeError(f"video is over the limit of {config.max_seconds:g} s (video.max_seconds)")
    container.seek(clock.start, stream=stream, backward=True, any_frame=False)
    return last


class FrameSeeker:
    """Decodes the frames shown at given times, seeking only where that saves decoding.

    For each wanted time (in order) the frame shown then is the last one whose timestamp is at
    or before it. The seeker decodes forward from where it is, unless a keyframe lies between
    its position and the wanted time: then it seeks there (the decoder restarts at that
    keyframe, skipping everything before). Without a known keyframe list it seeks when the gap
    exceeds `gap` seconds. A seek that lands after the wanted time (B-frames, inexact indexes)
    is retried further back.
    """

    def __init__(self, container: Any, stream: Any, clock: StreamClock, deadline: Deadline,
                 keyframes: list[float] | None, gap: float = 2.0):
        self.container = container
        self.stream = stream
        self.clock = clock
        self.deadline = deadline
        self.keyframes = keyframes
        self.gap = gap
        self.frames: Iterator[Any] | None = None
        self.current: Any = None  # last decoded frame at or before the last wanted time
        self.ahead: Any = None  # first decoded frame after it
        self.position = 0.0  # time of the last decoded frame
        self.ended = False
        self.seeks = 0
        self.decoded = 0

    def _time(self, frame: Any) -> float:
        t = self.clock.seconds(frame.pts)
        if t is None:
            t = self.clock.seconds(getattr(frame, "dts", None))
        return t if t is not None else self.position + self.clock.period

    def _should_seek(self, t: float) -> bool:
        if self.frames is None:
            start_keyframe = self.keyframes is not None and any(0.0 < k <= t for k in self.keyframes)
            return start_keyframe or (self.keyframes is None and t > self.gap)
        if self.keyframes is not None:
            return any(self.position < k <= t for k in self.keyframes)
        return t - self.position > self.gap

    def _seek(self, t: float) -> None:
        self.container.seek(max(self.clock.start, self.clock.pts(t)), stream=self.stream, backward=True, any_frame=False)
        self.frames = self.container.decode(self.stream)
        self.current = self.ahead = None
        self.ended = False
        self.seeks += 1

    def _next(self) -> Any:
        try:
            frame = next(self.frames)
        except StopIteration:
            self.ended = True
            return None
        self.decoded += 1
        if self.decoded % 16 == 0:
            self.deadline.check("decoding frames")
        self.position = self._time(frame)
        return frame

    def frame_at(self, t: float) -> Any:
        """The frame shown at `t` (None when the stream has no frame at all there)."""
        eps = 1e-4
        if self._should_seek(t):
            back = 0.0
            for _ in range(4):
                self._seek(max(0.0, t - back))
                first = self._next()
                if first is None or self._time(first) <= t + eps or t - back <= 0:
                    break
                back = max(1.0, 2 * back)  # landed after t: the index pointed past it
            self.ahead = first
        elif self.frames is None:
            self.frames = self.container.decode(self.stream)
        if self.ahead is not None:
            if self._time(self.ahead) > t + eps:
                return self.current if self.current is not None else self.ahead
            self.current, self.ahead = self.ahead, None
        while not self.ended:
            frame = self._next()
            if frame is None:
                break
            if self._time(frame) <= t + eps:
                self.current = frame
            else:
                self.ahead = frame
                break
        return self.current if self.current is not None else self.ahead


def window_seconds(sample: Any) -> float:
    """Length of a video sample's window: its clip's, else the video's (from decoding), else
    the span of its frames."""
    ref = sample.media
    if ref.clip is not None:
        return ref.clip.seconds
    duration = (sample.meta.get("video") or {}).get("duration")
    if isinstance(duration, (int, float)) and duration > 0:
        return float(duration)
    times = ref.times
    return (times[-1] - times[0]) if len(times) > 1 else 0.0


def video_input(sample: Any, frames: list[Frame] | None = None) -> Any:
    """The `VideoInput` a backend receives for a decoded video sample (all its sampled frames,
    or `frames`)."""
    from capmill.backends.base import VideoInput

    chosen = frames if frames is not None else (sample.media.frames or [])
    return VideoInput(frames=[f.image for f in chosen], times=[f.t for f in chosen], seconds=window_seconds(sample),
                      data=sample.media.data, ext=sample.media.ext, path=sample.media.path)


def frame_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode_video(ref: MediaRef, config: VideoConfig) -> tuple[list[Frame], VideoInfo]:
    """The frames `config.sampling` asks for, with hygiene; VideoDecodeError with the reason."""
    import av

    deadline = Deadline(config.timeout_s)
    with open_container(ref) as container:
        stream, info = stream_info(container)
        window = None
        if ref.clip is not None:
            window = (max(0.0, ref.clip.start - ref.clip.offset), max(0.0, ref.clip.end - ref.clip.offset))
        check_header(info, config, window)
        ctx = stream.codec_context
        ctx.thread_count = config.threads
        ctx.thread_type = "AUTO" if config.threads != 1 else "SLICE"
        clock = StreamClock(stream)
        try:
            if window is None:
                length = info.duration if info.duration is not None else stream_end(container, stream, clock, config, deadline)
                info.duration = length
                window = (0.0, length)
            if window[1] <= window[0]:
                raise VideoDecodeError("video has no duration (0 s)")
            sampling = config.sampling
            keyframes = keyframe_times(container, stream, clock, deadline)
            cuts = None
            if sampling.mode == "scenes":
                from capmill.media.scenes import detect_cuts

                cuts = detect_cuts(container, stream, clock, sampling.scene, window, deadline)
            wanted = sample_times(sampling, window[0], window[1], keyframes=keyframes, cuts=cuts)
            frames = _decode_at(container, stream, clock, deadline, keyframes, wanted, window, info, config)
        except av.error.FFmpegError as e:
            raise VideoDecodeError(f"corrupt video data: {_reason(e)}") from None
    return frames, info


def frames_at(ref: MediaRef, times: list[float], config: VideoConfig) -> list[Frame]:
    """The frames shown at `times` (seconds from the start of the sample's window), with the
    hygiene of `decode_video`: to show again the frames a run sampled (their times are recorded
    in the output)."""
    import av

    deadline = Deadline(config.timeout_s)
    with open_container(ref) as container:
        stream, info = stream_info(container)
        window = None
        if ref.clip is not None:
            window = (max(0.0, ref.clip.start - ref.clip.offset), max(0.0, ref.clip.end - ref.clip.offset))
        check_header(info, config, window)
        clock = StreamClock(stream)
        try:
            if window is None:
                window = (0.0, info.duration if info.duration is not None else stream_end(container, stream, clock, config, deadline))
            keyframes = keyframe_times(container, stream, clock, deadline)
            wanted = sorted(window[0] + t for t in times)
            return _decode_at(container, stream, clock, deadline, keyframes, wanted, window, info, config)
        except av.error.FFmpegError as e:
            raise VideoDecodeError(f"corrupt video data: {_reason(e)}") from None


def _decode_at(container, stream, clock, deadline, keyframes, wanted, window, info, config) -> list[Frame]:
    seeker = FrameSeeker(container, stream, clock, deadline, keyframes or None)
    frames: list[Frame] = []
    seen: set[int] = set()
    size = None
    claimed = f" (its header claims {info.duration:.1f} s)" if info.duration else ""
    for t in wanted:
        frame = seeker.frame_at(t)
        if frame is None:
            if frames:
                raise VideoDecodeError(f"truncated or corrupt video: no frame could be decoded at {t:.2f} s{claimed}")
            raise VideoDecodeError("no frame could be decoded (truncated or corrupt video data)")
        ft = seeker._time(frame)
        if seeker.ended and t - ft > max(END_TOLERANCE, 2 * clock.period) and ft < window[1] - END_TOLERANCE:
            raise VideoDecodeError(f"truncated or corrupt video: frames end at {ft:.2f} s{claimed}")
        if ft < window[0] - END_TOLERANCE:
            continue  # a clip whose window starts after every frame it holds
        key = frame.pts if frame.pts is not None else round(ft * 1e6)
        if key in seen:
            continue  # two wanted times in one frame's display interval
        seen.add(key)
        if size is None:
            size = frame_size(frame.width, frame.height, config.max_side)
        image = frame.to_image(width=size[0], height=size[1])
        # Rounded as records store it, so a stage sees the same time in every executor.
        frames.append(Frame(t=round(max(0.0, ft - window[0]), 6), image=image))
    if not frames:
        raise VideoDecodeError("no frame could be decoded (truncated or corrupt video data)")
    return frames
