"""Video frame sampling: throughput against plain PyAV, seeking against a full decode, memory
against video length, and the other decoders.

    python benchmarks/video_sampling.py [--minutes 10] [--frames 16] [--repeats 3]

1. Throughput: capmill's `decode_video` (header hygiene, keyframe index, seek-or-decode-forward,
   RGB at max_side) against a plain PyAV loop that takes the same frames the usual way — seek to
   each wanted time, decode forward to it, convert it at the same size. Both on the same files,
   same frames, same output size; ratio = capmill / plain (target ≥ 0.8).
2. Seeking against decoding everything: the same 16 frames of the long video by a sequential
   decode of every frame (what a sampler without seeking does).
3. Memory: peak RSS of a child process sampling the same number of frames from videos of 1, 5
   and 10 minutes read from disk (the growth should be ~0: memory follows the frames sampled).
4. Other decoders on the same frames, when installed: decord (`VideoReader.get_batch`) and
   torchcodec (`VideoDecoder.get_frames_played_at`), each converting to PIL at the same size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = (640, 360)


def make_video(path: str, minutes: float, fps: int = 25, gop: int = 250) -> str:
    """A test video of `minutes` at SIZE: a new textured scene every 20 s that pans 2 px a frame
    (real motion for the encoder and real work for the decoder, unlike flat colours), with x264
    keyframes every `gop` frames (x264's default keyint is 250); cached on disk."""
    if os.path.exists(path):
        return path
    import av
    import numpy as np

    from capmill.testing.shards import generated
    from capmill.testing.videos import frame_array

    w, h = SIZE
    tmp = f"{path}.tmp.mp4"
    with av.open(tmp, "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        number = 0
        for scene in range(int(minutes * 3)):
            texture = np.asarray(generated(scene, (w * 2, h)))
            for i in range(20 * fps):
                arr = np.ascontiguousarray(np.roll(texture, -2 * i, axis=1)[:, :w])
                arr[: h // 8] = frame_array(number, (0, 0, 0), (w, h), 0)[: h // 8]  # the frame's number
                frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
                frame.pts = number
                for packet in stream.encode(frame):
                    out.mux(packet)
                number += 1
        for packet in stream.encode():
            out.mux(packet)
    os.replace(tmp, path)
    return path


def wanted_times(seconds: float, n: int) -> list[float]:
    from capmill.media.sampling import uniform_times

    return uniform_times(0.0, seconds, n)


def capmill_frames(path: str, n: int):
    from capmill.media.sampling import SamplingConfig
    from capmill.media.video import VideoConfig, decode_video
    from capmill.sample import MediaRef

    frames, _ = decode_video(MediaRef(path=path, kind="video"), VideoConfig(sampling=SamplingConfig(frames=n, max_frames=n),
                                                                            max_side=max(SIZE)))
    return [f.image for f in frames]


def plain_pyav_frames(path: str, n: int):
    """The usual hand-written loop: seek to each time, decode forward to it, convert."""
    import av

    out = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        seconds = float(stream.duration * stream.time_base)
        for t in wanted_times(seconds, n):
            container.seek(int(t / stream.time_base), stream=stream, backward=True)
            chosen = None
            for frame in container.decode(stream):
                if frame.time is not None and frame.time > t:
                    break
                chosen = frame
            out.append((chosen or frame).to_image(width=SIZE[0], height=SIZE[1]))
    return out


def full_decode_frames(path: str, n: int):
    """Every frame decoded in order; the wanted ones converted."""
    import av

    out = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        seconds = float(stream.duration * stream.time_base)
        wanted = wanted_times(seconds, n)
        previous = None
        for frame in container.decode(stream):
            while wanted and frame.time > wanted[0]:
                out.append((previous or frame).to_image(width=SIZE[0], height=SIZE[1]))
                wanted.pop(0)
            previous = frame
        out.extend(previous.to_image(width=SIZE[0], height=SIZE[1]) for _ in wanted)
    return out


def decord_frames(path: str, n: int):
    import decord
    from PIL import Image

    reader = decord.VideoReader(path, num_threads=1)
    fps = reader.get_avg_fps()
    indices = [min(len(reader) - 1, int(t * fps)) for t in wanted_times(len(reader) / fps, n)]
    return [Image.fromarray(a).resize(SIZE) for a in reader.get_batch(indices).asnumpy()]


def torchcodec_frames(path: str, n: int):
    from PIL import Image
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(path, num_ffmpeg_threads=1, seek_mode="exact")
    seconds = decoder.metadata.duration_seconds
    batch = decoder.get_frames_played_at(wanted_times(seconds, n))
    return [Image.fromarray(a.permute(1, 2, 0).numpy()).resize(SIZE) for a in batch.data]


def timed(fn, path: str, n: int, repeats: int) -> float:
    """Best wall time of `repeats` runs (the first run also warms the file cache)."""
    fn(path, n)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        frames = fn(path, n)
        best = min(best, time.perf_counter() - start)
        assert len(frames) == n, (fn.__name__, len(frames))
    return best


_MEMORY_CHILD = """
import gc, os, resource, sys, json
sys.path.insert(0, {here!r})
from video_sampling import capmill_frames
import av, PIL.Image, capmill.media.video  # imports first: their memory is the same for every length
gc.collect()
page = os.sysconf("SC_PAGE_SIZE")
before = int(open("/proc/self/statm").read().split()[1]) * page / 2**20  # resident now
frames = capmill_frames({path!r}, {n})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # high-water mark, MiB
print(json.dumps({{"delta_mb": peak - before, "peak_mb": peak}}))
"""


def memory(path: str, n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD.format(here=HERE, path=path, n=n)],
                         capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "capmill-bench-videos"))
    args = parser.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core for every contender
    except (AttributeError, OSError):
        pass
    start = time.perf_counter()
    long_path = make_video(os.path.join(args.cache, f"v2_long_{args.minutes:g}min.mp4"), args.minutes)
    short_path = make_video(os.path.join(args.cache, "v2_short_1min.mp4"), 1.0)
    print(f"test videos ready in {time.perf_counter() - start:.1f}s: {long_path} ({os.path.getsize(long_path) / 1e6:.1f} MB)")
    n = args.frames
    print(f"\n1. throughput, {n} uniform frames, {SIZE[0]}x{SIZE[1]} RGB (best of {args.repeats})")
    for label, path in (("1 min", short_path), (f"{args.minutes:g} min", long_path)):
        ours = timed(capmill_frames, path, n, args.repeats)
        plain = timed(plain_pyav_frames, path, n, args.repeats)
        print(f"   {label:>7}: capmill {n / ours:7.1f} frames/s   plain PyAV {n / plain:7.1f} frames/s   "
              f"ratio {plain / ours:.2f}x")
    print(f"\n2. seeking vs decoding every frame ({args.minutes:g} min video, {n} frames)")
    ours = timed(capmill_frames, long_path, n, 1)
    full = timed(full_decode_frames, long_path, n, 1)
    print(f"   capmill (seek) {ours:.2f}s   full decode {full:.2f}s   speed-up {full / ours:.0f}x")
    print(f"\n3. peak memory, {n} frames from videos on disk")
    for minutes in (1.0, 5.0, args.minutes):
        path = make_video(os.path.join(args.cache, f"v2_{minutes:g}min.mp4"), minutes)
        m = memory(path, n)
        print(f"   {minutes:>4g} min ({os.path.getsize(path) / 1e6:5.1f} MB file): peak {m['peak_mb']:.0f} MiB, "
              f"{m['delta_mb']:+.1f} MiB over the resident size before decoding")
    print(f"\n4. other decoders, same {n} frames ({args.minutes:g} min video)")
    ours = timed(capmill_frames, long_path, n, args.repeats)
    for name, fn in (("decord", decord_frames), ("torchcodec", torchcodec_frames)):
        try:
            theirs = timed(fn, long_path, n, args.repeats)
        except Exception as e:  # not installed, or its native libraries do not load here
            print(f"   {name}: not measured ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
            continue
        print(f"   {name:<10} {n / theirs:7.1f} frames/s   capmill {n / ours:7.1f} frames/s   "
              f"capmill/{name} {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
