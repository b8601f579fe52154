"""Video decoding: the right frames at the right times (read back from each frame's barcode),
seeking instead of decoding everything, and hygiene for every kind of bad file."""

import io
import shutil
import subprocess

import pytest

from capmill.errors import VideoDecodeError
from capmill.media.sampling import SamplingConfig
from capmill.media.video import FrameSeeker, VideoConfig, decode_video
from capmill.sample import Clip, MediaRef
from capmill.testing.videos import Scene, VideoSpec, encode, hostile_videos, huge_claim, make_video, read_frame_number

FPS = 10


@pytest.fixture(scope="module")
def video():
    """12 s at 10 fps, keyframes every 2 s, cuts at 3 s and 7 s."""
    return encode(VideoSpec([Scene(3, "red"), Scene(4, "blue"), Scene(5, "green")], fps=FPS, gop=20))


def frames_of(data, **sampling):
    frames, info = decode_video(MediaRef(data=data, kind="video"), VideoConfig(sampling=SamplingConfig(**sampling)))
    return [(round(f.t, 2), read_frame_number(f.image)) for f in frames], info


def test_uniform_frames_are_the_frames_shown_at_those_times(video):
    got, info = frames_of(video, mode="uniform", frames=6)
    assert got == [(1.0, 10), (3.0, 30), (5.0, 50), (7.0, 70), (9.0, 90), (11.0, 110)]
    assert info.duration == 12.0 and info.fps == 10 and info.codec == "h264" and info.frames == 120


def test_fps_keyframes_and_scenes(video):
    got, _ = frames_of(video, mode="fps", fps=0.5)
    assert [n for _, n in got] == [10, 30, 50, 70, 90, 110]
    got, _ = frames_of(video, mode="keyframes")
    assert got == [(float(t), t * FPS) for t in range(0, 12, 2)]
    # One frame in the middle of each scene: the detector found exactly the two cuts.
    got, _ = frames_of(video, mode="scenes")
    assert got == [(1.5, 15), (5.0, 50), (9.5, 95)]


def test_frames_are_shrunk_to_max_side(video):
    frames, _ = decode_video(MediaRef(data=video, kind="video"), VideoConfig(max_side=64))
    assert {f.image.size for f in frames} == {(64, 43)}
    assert all(f.image.mode == "RGB" for f in frames)


def test_a_clip_window_is_decoded_alone(video):
    clip = Clip("v", 0, start=4.0, end=8.0, offset=0.0)
    frames, _ = decode_video(MediaRef(data=video, kind="video", clip=clip), VideoConfig(sampling=SamplingConfig(frames=4)))
    # Times count from the clip's start; frame numbers are the source's.
    assert [(round(f.t, 2), read_frame_number(f.image)) for f in frames] == [(0.5, 45), (1.5, 55), (2.5, 65), (3.5, 75)]


@pytest.mark.parametrize("container,codec", [("mkv", "libx264"), ("webm", "libvpx-vp9"), ("mov", "libx264")])
def test_other_containers_and_codecs(container, codec):
    data = encode(VideoSpec([Scene(4, "red"), Scene(4, "blue")], fps=FPS, container=container, codec=codec, gop=15))
    got, _ = frames_of(data, mode="uniform", frames=4)
    assert [n for _, n in got] == [10, 30, 50, 70]


def test_b_frames_and_long_gops_give_exact_frames():
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.options = {"preset": "medium", "crf": "12", "x264-params": "bframes=3:keyint=100"}
        from capmill.testing.videos import frame_array

        for n in range(500):
            frame = av.VideoFrame.from_ndarray(frame_array(n, (90, 90, 200), (128, 96), n / 500), format="rgb24")
            frame.pts = n
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    got, _ = frames_of(buf.getvalue(), mode="uniform", frames=7)
    assert all(abs(n - t * 25) <= 0.5 for t, n in got), got


def test_seeking_skips_frames_instead_of_decoding_them():
    import av

    from capmill.media.video import Deadline, StreamClock, keyframe_times

    data = encode(VideoSpec([Scene(60, "grey")], fps=FPS, gop=20))
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        clock = StreamClock(stream)
        deadline = Deadline(60)
        seeker = FrameSeeker(container, stream, clock, deadline, keyframe_times(container, stream, clock, deadline))
        numbers = [read_frame_number(seeker.frame_at(t).to_image()) for t in (5.0, 30.0, 55.0)]
    assert numbers == [50, 300, 550]
    assert seeker.seeks == 3 and seeker.decoded < 80  # 600 frames in the file


@pytest.mark.parametrize("name", sorted(hostile_videos()))
def test_hostile_videos_are_decode_errors_with_a_reason(name):
    data = hostile_videos()[name]
    with pytest.raises(VideoDecodeError) as err:
        decode_video(MediaRef(data=data, kind="video"), VideoConfig())
    reason = err.value.reason
    expected = {"empty": "empty file", "truncated": "not a readable video", "garbage": "not a readable video",
                "audio_only": "only audio", "huge_claim": "7680x4320"}[name]
    assert expected in reason


def test_header_limits_are_checked_before_decoding():
    claim = huge_claim(width=256, height=144, frames=100_000)
    with pytest.raises(VideoDecodeError, match="claims 100000 frames"):
        decode_video(MediaRef(data=claim, kind="video"), VideoConfig(max_frames=50_000))
    long = make_video([Scene(6, "red")], fps=5)
    with pytest.raises(VideoDecodeError, match=r"6\.0 s long, over the limit of 5 s"):
        decode_video(MediaRef(data=long, kind="video"), VideoConfig(max_seconds=5))
    with pytest.raises(VideoDecodeError, match="codec h264 not allowed"):
        decode_video(MediaRef(data=long, kind="video"), VideoConfig(codecs=["vp9"]))


def test_truncated_data_after_an_intact_header_is_a_decode_error(tmp_path, video):
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg command to move the header to the front (scripts/system-deps.sh)")
    (tmp_path / "a.mp4").write_bytes(encode(VideoSpec([Scene(60, "red")], fps=FPS, gop=20)))
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(tmp_path / "a.mp4"), "-c", "copy", "-movflags",
                    "faststart", str(tmp_path / "b.mp4")], check=True)
    data = (tmp_path / "b.mp4").read_bytes()
    with pytest.raises(VideoDecodeError, match="truncated or corrupt"):
        decode_video(MediaRef(data=data[: len(data) // 2], kind="video"), VideoConfig())


def test_decoding_time_is_bounded(video):
    with pytest.raises(VideoDecodeError, match="longer than the limit"):
        decode_video(MediaRef(data=video, kind="video"),
                     VideoConfig(timeout_s=1e-6, sampling=SamplingConfig(mode="fps", fps=10, max_frames=120)))


def test_a_file_is_read_where_it_lies(tmp_path, video):
    path = tmp_path / "v.mp4"
    path.write_bytes(video)
    ref = MediaRef(path=str(path), kind="video", ext="mp4")
    frames, _ = decode_video(ref, VideoConfig(sampling=SamplingConfig(frames=2)))
    assert len(frames) == 2 and ref.data is None  # never loaded whole
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="empty file"):
        decode_video(MediaRef(path=str(tmp_path / "empty.mp4"), kind="video"), VideoConfig())
