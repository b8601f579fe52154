"""Clips cut from the stream at read time: deterministic keys, exact windows, their own bytes,
and a row with the reason for a video that cannot be cut."""

import pytest

from capmill.media.clips import ClipConfig, cut, expand
from capmill.media.sampling import SamplingConfig
from capmill.media.video import VideoConfig, decode_video
from capmill.sample import MediaRef, Sample
from capmill.testing.videos import Scene, VideoSpec, encode, hostile_videos, read_frame_number


@pytest.fixture(scope="module", params=["mp4", "mkv", "webm"])
def source(request):
    codec = "libvpx-vp9" if request.param == "webm" else "libx264"
    spec = VideoSpec([Scene(3, "red", 440), Scene(4, "blue"), Scene(5, "green", 880)], fps=10, gop=20,
                     container=request.param, codec=codec)
    return request.param, encode(spec)


def test_fixed_clips_snap_to_keyframes_and_decode_to_their_own_frames(source):
    ext, data = source
    video = Sample(key="v1", image=MediaRef(data=data, ext=ext, kind="video"), alt_text="a cooking video", meta={"k": 1})
    clips = list(expand(video, ClipConfig(seconds=5, min_seconds=1)))
    assert [c.key for c in clips] == ["v1_clip0000", "v1_clip0001", "v1_clip0002"]
    assert [(c.media.clip.start, c.media.clip.end) for c in clips] == [(0, 4), (4, 10), (10, pytest.approx(12, abs=0.1))]
    for clip in clips:
        assert clip.ok and clip.alt_text == "a cooking video" and clip.meta["k"] == 1
        assert clip.media.clip.source == "v1" and clip.media.ext == ext and len(clip.media.data) < len(data)
        frames, info = decode_video(clip.media, VideoConfig(sampling=SamplingConfig(mode="fps", fps=1)))
        # Each frame is the source frame shown at clip start + t.
        assert [read_frame_number(f.image) for f in frames] == [round((clip.media.clip.start + f.t) * 10) for f in frames]
        assert info.audio  # the soundtrack is copied with the picture


def test_scene_clips_follow_the_cuts(source):
    ext, data = source
    clips = list(expand(Sample(key="v", image=MediaRef(data=data, ext=ext, kind="video")),
                        ClipConfig(by="scenes", seconds=30, min_seconds=1)))
    assert [(c.media.clip.start, round(c.media.clip.end)) for c in clips] == [(0, 3), (3, 7), (7, 12)]
    # Scene starts are not keyframes: the bytes start at the keyframe before, the offset says where.
    assert [c.media.clip.offset for c in clips] == [0, 2, 6]


def test_a_cut_between_keyframes_starts_exactly_at_its_window():
    data = encode(VideoSpec([Scene(10, "grey")], fps=10, gop=20))
    clip_bytes, offset = cut(MediaRef(data=data, kind="video"), 5.0, 8.0)
    assert offset == 4.0
    from capmill.sample import Clip

    ref = MediaRef(data=clip_bytes, kind="video", clip=Clip("x", 0, 5.0, 8.0, offset))
    frames, _ = decode_video(ref, VideoConfig(sampling=SamplingConfig(mode="fps", fps=2)))
    assert [read_frame_number(f.image) for f in frames] == [52, 57, 62, 67, 72, 77]


def test_keys_and_bytes_are_the_same_on_every_read():
    data = encode(VideoSpec([Scene(7, "red")], fps=10, gop=10))
    config = ClipConfig(seconds=3, min_seconds=0.5)
    first = [(c.key, c.media.data) for c in expand(Sample(key="k", image=MediaRef(data=data, kind="video")), config)]
    second = [(c.key, c.media.data) for c in expand(Sample(key="k", image=MediaRef(data=data, kind="video")), config)]
    assert first == second and len(first) == 3


def test_a_video_that_cannot_be_cut_keeps_its_row_with_the_reason():
    sample = Sample(key="bad", image=MediaRef(data=hostile_videos()["audio_only"], kind="video", ext="mp4"))
    out = list(expand(sample, ClipConfig()))
    assert len(out) == 1 and out[0].key == "bad" and out[0].status == "decode_error"
    assert "cutting into clips" in out[0].error and "only audio" in out[0].error


def test_max_clips_leaves_the_rest_out_and_says_so():
    data = encode(VideoSpec([Scene(10, "red")], fps=5, gop=5))
    clips = list(expand(Sample(key="v", image=MediaRef(data=data, kind="video")), ClipConfig(seconds=1, min_seconds=0, max_clips=3)))
    assert len(clips) == 3
    assert clips[0].meta["video"]["source_clips_left_out"] == 7
