"""Builders of test videos: known scene cuts, frame numbers you can read back, tones or speech.

    from capmill.testing.videos import Scene, make_video
    data = make_video([Scene(2.0, "red"), Scene(3.0, "blue")], fps=10)   # mp4 bytes, a cut at 2 s

Every frame carries its own number as a 16-bit barcode in a band along the top (`read_frame_number`
reads it back from a decoded frame, even a downscaled one), so a test can check that the frame
a decoder returned for a timestamp is the right one. Each scene is a flat colour with a square
moving across it: frames inside a scene differ a little, scenes differ a lot, so a scene
detector finds exactly the cuts between scenes. Sound is a tone per scene or speech spoken by
espeak-ng (Debian's `espeak-ng`; `speech` raises SetupError naming the package when it is
missing) placed at given times.

These are fixtures: the colours, tones and words are known, which is what makes them test data.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass, field

import numpy as np

from capmill.media.audio import resample

COLOURS = {
    "red": (200, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 200), "yellow": (230, 210, 40),
    "purple": (130, 40, 160), "orange": (240, 130, 20), "grey": (120, 120, 120), "cyan": (40, 190, 200),
    "white": (235, 235, 235), "black": (15, 15, 15),
}
BITS = 16  # frame-number barcode width
_BAND = 0.125  # share of the height the barcode band takes


@dataclass(slots=True)
class Scene:
    seconds: float
    colour: str | tuple[int, int, int] = "grey"
    tone_hz: float | None = None  # a sine tone under this scene (None: silence, or the speech track)


@dataclass(slots=True)
class Utterance:
    """Speech at `start` seconds."""

    start: float
    text: str


@dataclass(slots=True)
class VideoSpec:
    scenes: list[Scene]
    fps: int = 10
    size: tuple[int, int] = (192, 128)
    codec: str = "libx264"
    container: str = "mp4"
    gop: int | None = None  # frames between keyframes (None: the encoder's default)
    speech: list[Utterance] = field(default_factory=list)
    audio_rate: int = 16000

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.scenes)

    @property
    def cuts(self) -> list[float]:
        """Times of the scene cuts (the start of every scene but the first)."""
        out, t = [], 0.0
        for scene in self.scenes[:-1]:
            t += scene.seconds
            out.append(t)
        return out


def _rgb(colour: str | tuple[int, int, int]) -> tuple[int, int, int]:
    return COLOURS[colour] if isinstance(colour, str) else colour


def frame_array(number: int, colour: tuple[int, int, int], size: tuple[int, int], progress: float) -> np.ndarray:
    """One frame: a flat colour, a square at `progress` (0–1) across it, the barcode on top."""
    w, h = size
    arr = np.empty((h, w, 3), np.uint8)
    arr[:] = colour
    side = max(4, h // 4)
    x = int(progress * (w - side))
    y = h // 2
    arr[y:y + side, x:x + side] = [255 - c for c in colour]
    band = max(4, int(h * _BAND))
    cell = w / BITS
    arr[:band] = 0
    for bit in range(BITS):
        if number >> (BITS - 1 - bit) & 1:
            arr[:band, int(bit * cell):int((bit + 1) * cell)] = 255
    return arr


def read_frame_number(image) -> int:
    """The frame number a `frame_array` frame carries, read from a decoded (possibly resized) frame."""
    arr = np.asarray(image.convert("L") if hasattr(image, "convert") else image, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr.mean(axis=2)
    h, w = arr.shape
    row = arr[: max(1, int(h * _BAND * 0.6))].mean(axis=0)
    number = 0
    for bit in range(BITS):
        centre = row[int((bit + 0.5) * w / BITS)]
        number = (number << 1) | int(centre > 127)
    return number


def speech(text: str, rate: int = 16000) -> np.ndarray:
    """`text` spoken by espeak-ng, as mono float32 samples at `rate` Hz."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        from capmill.errors import SetupError

        raise SetupError("speech test clips need espeak-ng: apt-get install espeak-ng (scripts/system-deps.sh)")
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run([exe, "-v", "en-us", "-s", "150", "-w", f.name, text], check=True, capture_output=True, timeout=60)
        with wave.open(f.name, "rb") as w:
            native = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
            if w.getnchannels() > 1:
                pcm = pcm.reshape(-1, w.getnchannels()).mean(axis=1)
    return resample(pcm, native, rate)


def soundtrack(spec: VideoSpec) -> np.ndarray | None:
    """The audio of `spec` (tones per scene plus speech), or None when it has none."""
    if not spec.speech and not any(s.tone_hz for s in spec.scenes):
        return None
    rate = spec.audio_rate
    audio = np.zeros(int(round(spec.seconds * rate)), np.float32)
    t = 0.0
    for scene in spec.scenes:
        a, b = int(t * rate), int((t + scene.seconds) * rate)
        if scene.tone_hz:
            audio[a:b] += 0.3 * np.sin(2 * np.pi * scene.tone_hz * np.arange(b - a) / rate).astype(np.float32)
        t += scene.seconds
    for utterance in spec.speech:
        voice = speech(utterance.text, rate)
        a = int(utterance.start * rate)
        voice = voice[: max(0, len(audio) - a)]
        audio[a:a + len(voice)] += voice
    return np.clip(audio, -1, 1)


def encode(spec: VideoSpec) -> bytes:
    """The video `spec` describes, encoded with PyAV."""
    import av

    buf = io.BytesIO()
    audio = soundtrack(spec)
    with av.open(buf, "w", format={"mkv": "matroska"}.get(spec.container, spec.container)) as out:
        video = out.add_stream(spec.codec, rate=spec.fps)
        video.width, video.height = spec.size
        video.pix_fmt = "yuv420p"
        if spec.codec == "libx264":
            # Near-lossless so the barcode survives; fixed GOPs so tests know the keyframes.
            params = "scenecut=0" + (f":keyint={spec.gop}:min-keyint={spec.gop}" if spec.gop else "")
            video.options = {"crf": "12", "preset": "ultrafast", "x264-params": params}
        elif spec.gop:
            video.codec_context.gop_size = spec.gop
        sound = None
        if audio is not None:
            sound = out.add_stream("aac" if spec.container in ("mp4", "mov", "mkv") else "libopus", rate=spec.audio_rate)
            sound.layout = "mono"
        number = 0
        for scene in spec.scenes:
            count = int(round(scene.seconds * spec.fps))
            for i in range(count):
                arr = frame_array(number, _rgb(scene.colour), spec.size, i / max(1, count - 1))
                frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
                frame.pts = number
                for packet in video.encode(frame):
                    out.mux(packet)
                number += 1
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            _encode_audio(out, sound, audio, spec.audio_rate)
    return buf.getvalue()


def _encode_audio(out, stream, audio: np.ndarray, rate: int) -> None:
    import av

    size = stream.codec_context.frame_size or 1024
    for start in range(0, len(audio), size):
        chunk = np.zeros(size, np.float32)
        piece = audio[start:start + size]
        chunk[: len(piece)] = piece
        frame = av.AudioFrame.from_ndarray(chunk[np.newaxis, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def make_video(scenes: list[Scene], **options) -> bytes:
    """Encoded video bytes for `scenes` (see VideoSpec for the options)."""
    return encode(VideoSpec(scenes=scenes, **options))


def audio_only(seconds: float = 1.0, container: str = "mp4", tone_hz: float = 440.0) -> bytes:
    """A file with a sound track and no video stream (what an .mp4 of a podcast is)."""
    import av

    rate = 16000
    audio = (0.3 * np.sin(2 * np.pi * tone_hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        _encode_audio(out, stream, audio, rate)
    return buf.getvalue()


def hostile_videos() -> dict[str, bytes]:
    """Bad inputs a video reader meets, by name (all .mp4): each must become a decode_error with
    a reason under the default video settings."""
    good = make_video([Scene(1.0, "red"), Scene(1.0, "blue")], fps=10)
    return {
        "empty": b"",
        "truncated": good[: len(good) // 3],
        "garbage": b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8,
        "audio_only": audio_only(1.0),
        "huge_claim": huge_claim(),
    }


def huge_claim(width: int = 7680, height: int = 4320, frames: int = 100_000) -> bytes:
    """An mp4 whose header claims `width`×`height` and `frames` frames: one real frame of that
    size (a flat image costs a few hundred bytes to encode) whose sample table entry is
    rewritten to repeat `frames` times."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height = width, height
        video.pix_fmt = "yuv420p"
        video.options = {"preset": "ultrafast", "crf": "40"}
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.pts = 0
        for packet in video.encode(frame):
            out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    data = bytearray(buf.getvalue())
    at = data.find(b"stts")
    if at > 0:  # stts: version/flags, entry count, then (sample_count, sample_delta) pairs
        data[at + 12:at + 16] = frames.to_bytes(4, "big")
    return bytes(data)


SCENE_COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "cyan", "grey"]
# Narration used by `video_items(speech=True)`: one utterance per scene.
NARRATION = [
    "First we cut the red pepper into thin strips.",
    "Then we heat the oil in a blue pan.",
    "Now we add the green onions and stir.",
    "Finally we serve the dish on a yellow plate.",
]


def video_spec(index: int, scenes: int = 3, scene_seconds: float = 1.0, fps: int = 10,
               size: tuple[int, int] = (128, 96), tones: bool = False, speech: bool = False, **options) -> VideoSpec:
    """The spec of test video number `index`: `scenes` scenes of distinct colours (rotated by
    index), a tone per scene or one narrated sentence per scene."""
    chosen = [SCENE_COLOURS[(index + i) % len(SCENE_COLOURS)] for i in range(scenes)]
    spec_scenes = [Scene(scene_seconds, c, tone_hz=(330.0 + 110 * i) if tones else None) for i, c in enumerate(chosen)]
    narration = [Utterance(i * scene_seconds + 0.2, NARRATION[i % len(NARRATION)]) for i in range(scenes)] if speech else []
    return VideoSpec(spec_scenes, fps=fps, size=size, speech=narration, **options)


def video_items(n: int, start: int = 0, prefix: str = "vid", **options):
    """n test videos as shard items (`capmill.testing.Item`), keys `{prefix}{i:04d}`; options go
    to `video_spec` (scenes, scene_seconds, fps, size, tones, speech, container, codec, gop)."""
    from capmill.testing.shards import Item

    for i in range(start, start + n):
        spec = video_spec(i, **options)
        colours = ", ".join(s.colour for s in spec.scenes)
        key = f"{prefix}{i:04d}"
        ext = "mkv" if spec.container == "matroska" else spec.container
        yield Item(key, encode(spec), ext, f"test video {i}: {colours} scenes",
                   {"key": key, "seconds": spec.seconds, "cuts": spec.cuts})


def write_video_webdataset(directory, shards: int = 1, per_shard: int = 4, hostile: bool = False, **options) -> list[str]:
    """`shards` tar files of test videos (`KEY.mp4` + `KEY.txt` + `KEY.json`); with `hostile`,
    the last shard also holds every bad video of `hostile_videos`."""
    import os

    from capmill.testing.shards import Item, write_tar

    paths = []
    for s in range(shards):
        samples = list(video_items(per_shard, start=s * per_shard, **options))
        if hostile and s == shards - 1:
            samples += [Item(f"bad_{name}", data, "mp4", f"hostile video {name}", {})
                        for name, data in hostile_videos().items()]
        paths.append(write_tar(os.path.join(os.fspath(directory), f"{s:05d}.tar"), samples))
    return paths


def write_video_folder(directory, n: int = 3, **options) -> str:
    """A folder of test videos with `.txt` sidecars."""
    from capmill.testing.shards import write_folder

    return write_folder(directory, video_items(n, **options))
