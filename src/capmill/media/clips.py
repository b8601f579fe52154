"""Long videos as clips: each clip its own sample, cut from the stream without re-encoding.

`input.clips` makes a reader yield, for every video, one sample per clip window instead of one
per video (windows: `capmill.media.sampling.clip_windows`, fixed-length or one per scene). A
clip's bytes are the packets of its window copied into a new file of the source's container
(stream copy: no decoding, no quality loss, milliseconds per clip), so every later step —
decoding, writers, the Ray rows — treats a clip as an ordinary small video, and memory holds
one clip at a time, not the source. A stream copy must start at a keyframe: the clip's bytes
start at the keyframe at or before the window, and `Clip.offset` records where that is so
decoding takes frames from the window only. Fixed-length windows snap to keyframes nearby, so
most clips start exactly where they say.

Clip keys are `SOURCE_clipNNNN`, numbered in time order: the same input and settings give the
same keys, so a resumed run finds the clips it already wrote. Audio files are cut the same way
into fixed windows (see capmill.media.audio_clips).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field

from capmill.components import Strict
from capmill.errors import MediaDecodeError, SampleError, VideoDecodeError
from capmill.media.sampling import SceneConfig, clip_windows
from capmill.sample import AUDIO, DECODE_ERROR, VIDEO, Clip, MediaRef, Sample

# Muxer for each extension a clip keeps.
MUXERS = {"mp4": "mp4", "mov": "mov", "webm": "webm", "mkv": "matroska"}


class ClipConfig(Strict):
    """How a reader cuts each video (and audio file) into clip samples (`input.clips`)."""

    # fixed: windows of `seconds`; scenes: one clip per scene (scene cuts by PySceneDetect's
    # adaptive detector), scenes longer than `seconds` cut into equal parts. Audio is always cut
    # in fixed windows.
    by: Literal["fixed", "scenes"] = "fixed"
    seconds: float = Field(30.0, gt=0)
    # A last window (or a scene) shorter than this joins the one before it.
    min_seconds: float = Field(2.0, ge=0)
    # fixed: move a boundary to a keyframe at most this far away, so the clip starts exactly
    # there (None: a quarter of `seconds`; 0: never move).
    snap_seconds: float | None = Field(None, ge=0)
    # Clips per video at most (the rest of a longer video is left out and counted in its meta).
    max_clips: int = Field(10_000, ge=1)
    # Longest source video (or audio file) accepted for cutting.
    max_source_seconds: float = Field(24 * 3600.0, gt=0)
    # Seconds to probe and cut one video (scene detection decodes every frame).
    timeout_s: float = Field(600.0, gt=0)
    scene: SceneConfig = Field(default_factory=SceneConfig)


def clip_key(source_key: str, index: int) -> str:
    return f"{source_key}_clip{index:04d}"


def expand(sample: Sample, config: ClipConfig) -> Iterator[Sample]:
    """`sample` (a video or an audio file) as its clips, in time order; one that cannot be cut
    keeps its row with a decode_error saying why."""
    audio = sample.media.kind == AUDIO
    kind, facts_key = (AUDIO, "audio") if audio else (VIDEO, "video")
    try:
        if audio:
            from capmill.media import audio_clips

            windows, info = audio_clips.plan(sample.media, config)
        else:
            windows, info = plan(sample.media, config)
        if not windows:
            raise VideoDecodeError(f"{facts_key} has no duration (0 s): nothing to cut into clips")
    except SampleError as e:
        sample.fail(DECODE_ERROR if isinstance(e, MediaDecodeError) else e.status, f"cutting into clips: {e.reason}")
        yield sample
        return
    source_path = sample.media.path or sample.media.url
    for index, (start, end) in enumerate(windows):
        meta = dict(sample.meta)
        meta[facts_key] = {f"source_{k}": v for k, v in info.items()
                           if k in ("duration", "clips", "clips_left_out", "duration_claimed")}
        try:
            if audio:
                data, ext = audio_clips.cut(sample.media, start, end, config.timeout_s)
                offset = start
            else:
                data, offset = cut(sample.media, start, end)
                ext = _ext(sample.media)
        except SampleError as e:
            clip = Sample(key=clip_key(sample.key, index), alt_text=sample.alt_text, meta=meta,
                          image=MediaRef(kind=kind, ext=sample.media.ext,
                                         clip=Clip(sample.key, index, start, end, start, source_path)))
            clip.fail(DECODE_ERROR, f"cutting clip {start:.2f}-{end:.2f} s: {e.reason}")
            yield clip
            continue
        ref = MediaRef(data=data, ext=ext, kind=kind, clip=Clip(sample.key, index, start, end, offset, source_path))
        yield Sample(key=clip_key(sample.key, index), image=ref, alt_text=sample.alt_text, meta=meta)


def _ext(ref: MediaRef) -> str:
    return ref.ext if ref.ext in MUXERS else "mp4"


def plan(ref: MediaRef, config: ClipConfig) -> tuple[list[tuple[float, float]], dict[str, Any]]:
    """The clip windows of the video `ref`, and its header facts for the clips' meta."""
    from capmill.media.video import (
        Deadline,
        StreamClock,
        VideoConfig,
        check_header,
        keyframe_times,
        open_container,
        stream_end,
        stream_info,
    )

    deadline = Deadline(config.timeout_s)
    limits = VideoConfig(max_seconds=config.max_source_seconds, max_frames=10**9)
    with open_container(ref) as container:
        stream, info = stream_info(container)
        check_header(info, limits)
        clock = StreamClock(stream)
        duration = info.duration if info.duration is not None else stream_end(container, stream, clock, limits, deadline)
        keyframes = keyframe_times(container, stream, clock, deadline)
        cuts = None
        if config.by == "scenes":
            from capmill.media.scenes import detect_cuts

            cuts = detect_cuts(container, stream, clock, config.scene, (0.0, duration), deadline)
    snap = config.snap_seconds if config.snap_seconds is not None else config.seconds / 4
    windows = clip_windows(duration, config.seconds, config.min_seconds, cuts=cuts, keyframes=keyframes,
                           snap=snap if config.by == "fixed" else 0.0)
    facts = {"duration": round(duration, 3), "clips": len(windows)}
    if len(windows) > config.max_clips:
        facts["clips_left_out"] = len(windows) - config.max_clips
        windows = windows[: config.max_clips]
    return windows, facts


def cut(ref: MediaRef, start: float, end: float) -> tuple[bytes, float]:
    """The packets of [start, end) of `ref` (video and first audio stream) copied into a new file
    of the same container, from the keyframe at or before `start`. Returns the bytes and the
    source time (seconds from the source's start) of the clip's time zero."""
    import av

    from capmill.media.video import StreamClock, open_container

    ext = _ext(ref)
    out_buf = io.BytesIO()
    with open_container(ref) as source:
        video = source.streams.video[0]
        audio = source.streams.audio[0] if source.streams.audio else None
        vclock = StreamClock(video)
        chosen = [video] + ([audio] if audio is not None else [])
        source.seek(max(vclock.start, vclock.pts(start)), stream=video, backward=True, any_frame=False)
        shift_seconds: float | None = None  # source seconds (from its start) that become clip time 0
        started = False
        try:
            with av.open(out_buf, "w", format=MUXERS[ext]) as out:
                outs = {s.index: out.add_stream_from_template(s) for s in chosen}
                pending_audio: list[Any] = []
                for packet in source.demux(chosen):
                    if packet.dts is None and packet.pts is None:
                        continue  # the demuxer's end-of-stream flush packet
                    clock = vclock if packet.stream.index == video.index else StreamClock(packet.stream)
                    t = clock.seconds(packet.pts if packet.pts is not None else packet.dts)
                    if packet.stream.index == video.index:
                        if not started:
                            if not packet.is_keyframe:
                                continue
                            started = True
                            shift_seconds = clock.seconds(packet.dts if packet.dts is not None else packet.pts)
                            shift_seconds = min(shift_seconds, t)
                            for held in pending_audio:
                                _mux(out, outs, held, shift_seconds)
                            pending_audio = []
                        dts_t = clock.seconds(packet.dts) if packet.dts is not None else t
                        if dts_t >= end:
                            break
                        _mux(out, outs, packet, shift_seconds)
                    else:
                        if t is None or t >= end:
                            continue
                        if not started:
                            pending_audio.append(packet)
                            continue
                        if t >= shift_seconds:
                            _mux(out, outs, packet, shift_seconds)
        except av.error.FFmpegError as e:
            raise VideoDecodeError(f"stream copy failed: {getattr(e, 'strerror', None) or e}") from None
    if not started:
        raise VideoDecodeError(f"no keyframe at or before {start:.2f} s to start the clip at")
    data = out_buf.getvalue()
    # The muxer may rebase timestamps: read back where the clip's stream starts.
    with open_container(MediaRef(data=data)) as clip:
        clip_stream = clip.streams.video[0]
        clip_clock = StreamClock(clip_stream)
        clip_start = (clip_clock.start or 0) * (clip_clock.tb or 0)
    return data, shift_seconds + clip_start


def _mux(out: Any, outs: dict[int, Any], packet: Any, shift_seconds: float) -> None:
    """`packet` into the clip with its timestamps moved `shift_seconds` earlier."""
    from capmill.media.video import StreamClock

    stream = packet.stream
    clock = StreamClock(stream)
    shift = round(shift_seconds / clock.tb) + clock.start
    if packet.pts is not None:
        packet.pts -= shift
    if packet.dts is not None:
        packet.dts -= shift
    if (packet.dts is not None and packet.dts < 0) or (packet.pts is not None and packet.pts < 0):
        return  # audio from before the clip's first frame
    packet.stream = outs[stream.index]
    out.mux(packet)

