"""Builders of test audio: tones and noise with known content, speech, silence, clipped and bad files.

    from capmill.testing.audio import Sound, encode_audio, make_audio
    data = make_audio([Sound(1.0, tone_hz=440), Sound(1.0, tone_hz=880)], ext="flac")   # 2 s, 440 then 880 Hz

A clip is a sequence of `Sound`s, each a sine tone (its frequency is what a test reads back with
`dominant_hz`), white noise, silence or a sentence spoken by espeak-ng (Debian's `espeak-ng`;
`speech` raises SetupError naming the package when it is missing). Files are written by
libsndfile (WAV, FLAC, Ogg Vorbis, MP3) or FFmpeg (M4A/AAC), at any rate and channel count.
`hostile_audio` gives the bad inputs an audio reader meets (empty, garbage, truncated, a header
claiming hours, NaN samples, an unknown codec, a video without sound); `awkward_audio` the
unusual but valid ones that are normalised (96 kHz 8-channel, overs beyond full scale, silence).

These are fixtures: the tones, words and keys are known, which is what makes them test data.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# Tones of the test clips and the words their AltText / metadata use for them.
TONES = [(220.0, "low hum"), (440.0, "steady beep"), (660.0, "bright whistle"), (880.0, "high chime"),
         (330.0, "soft drone"), (550.0, "electronic tone")]
# Sentences the speech clips say (whisper tiny.en recognises these words).
SENTENCES = [
    "The dog is barking in the garden.",
    "Please close the kitchen window.",
    "The train arrives at seven o'clock.",
    "We are cooking pasta for dinner tonight.",
]


@dataclass(slots=True)
class Sound:
    """One part of a test clip: `seconds` of a tone (`tone_hz`), noise, silence (neither), or
    `text` spoken (its own length)."""

    seconds: float = 1.0
    tone_hz: float | None = None
    noise: bool = False
    text: str | None = None
    amplitude: float = 0.4


def speech(text: str, rate: int = 16000) -> np.ndarray:
    """`text` spoken by espeak-ng, mono float32 at `rate` Hz."""
    from capmill.testing.videos import speech as spoken

    return spoken(text, rate)


def render(sounds: list[Sound], rate: int = 16000, seed: int = 0) -> np.ndarray:
    """The mono float32 signal of `sounds` at `rate` Hz."""
    rng = np.random.default_rng(seed)
    parts = []
    for sound in sounds:
        if sound.text is not None:
            part = speech(sound.text, rate) * (sound.amplitude / 0.4)
        else:
            n = int(round(sound.seconds * rate))
            t = np.arange(n) / rate
            part = np.zeros(n, np.float32)
            if sound.tone_hz:
                part = part + sound.amplitude * np.sin(2 * np.pi * sound.tone_hz * t)
            if sound.noise:
                part = part + sound.amplitude * 0.5 * rng.standard_normal(n)
        parts.append(np.asarray(part, np.float32))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


_SOUNDFILE = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"),
              "mp3": ("MP3", "MPEG_LAYER_III")}


def encode_audio(signal: np.ndarray, rate: int = 16000, ext: str = "wav", subtype: str | None = None) -> bytes:
    """`signal` ((n,) mono or (n, channels)) as a file of type `ext`: wav, flac, ogg, mp3 through
    libsndfile (`subtype`, e.g. "FLOAT", overrides its sample format), m4a through FFmpeg's AAC."""
    signal = np.asarray(signal, np.float32)
    if ext == "m4a":
        return _encode_m4a(signal, rate)
    import soundfile as sf

    fmt, default = _SOUNDFILE[ext]
    buf = io.BytesIO()
    sf.write(buf, signal, rate, format=fmt, subtype=subtype or default)
    return buf.getvalue()


def _encode_m4a(signal: np.ndarray, rate: int) -> bytes:
    import av

    channels = 1 if signal.ndim == 1 else signal.shape[1]
    planar = signal.reshape(-1, 1).T if signal.ndim == 1 else signal.T
    buf = io.BytesIO()
    with av.open(buf, "w", format="ipod") as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono" if channels == 1 else "stereo"
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar), format="fltp", layout=stream.layout.name)
        frame.sample_rate = rate
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def make_audio(sounds: list[Sound], rate: int = 16000, ext: str = "wav", channels: int = 1, **options) -> bytes:
    """Encoded test audio of `sounds`; `channels` > 1 repeats the signal on every channel."""
    signal = render(sounds, rate)
    if channels > 1:
        signal = np.repeat(signal[:, None], channels, axis=1)
    return encode_audio(signal, rate, ext, **options)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    """The frequency of the strongest spectral peak of `samples` (a tone's pitch)."""
    samples = np.asarray(samples, np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def wav_header_claiming(seconds: float, rate: int = 16000, real_seconds: float = 0.5) -> bytes:
    """A 16-bit mono WAV whose header claims `seconds` of audio but holds `real_seconds`."""
    frames = int(real_seconds * rate)
    pcm = (0.3 * np.sin(2 * np.pi * 440 * np.arange(frames) / rate) * 32767).astype("<i2").tobytes()
    claimed = min(0xFFFFFFF0, int(seconds * rate) * 2)
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", min(0xFFFFFFFF, 36 + claimed)) + b"WAVE" + fmt + b"data" + struct.pack("<I", claimed) + pcm


def flac_claiming(seconds: float, rate: int = 16000) -> bytes:
    """A FLAC whose STREAMINFO claims `seconds` of audio (it holds half a second)."""
    data = bytearray(make_audio([Sound(0.5, tone_hz=440)], rate=rate, ext="flac"))
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO is the first metadata block
    at = 8 + 10  # rate (20 bits), channels (3), bits (5), total samples (36): one big-endian 64-bit word
    word = int.from_bytes(data[at:at + 8], "big")
    word = (word & ~((1 << 36) - 1)) | min(int(seconds * rate), (1 << 36) - 1)
    data[at:at + 8] = word.to_bytes(8, "big")
    return bytes(data)


def wav_with_format_tag(tag: int, rate: int = 16000) -> bytes:
    """A WAV whose `fmt ` chunk names codec `tag` (0x1234 is no codec anyone decodes)."""
    body = bytes(rate)  # a second of bytes in the unknown format
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, tag, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + len(body)) + b"WAVE" + fmt + b"data" + struct.pack("<I", len(body)) + body


def nan_wav(seconds: float = 1.0, rate: int = 16000, share: float = 1.0) -> bytes:
    """A 32-bit float WAV whose samples are NaN (all of them, or the first `share`)."""
    signal = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
    signal[: int(len(signal) * share)] = np.nan
    return encode_audio(signal, rate, "wav", subtype="FLOAT")


def hostile_audio() -> dict[str, tuple[bytes, str]]:
    """Bad audio inputs by name, as (bytes, extension): each must become a decode_error with a
    reason under the default audio settings."""
    from capmill.testing.videos import Scene, make_video

    good = make_audio([Sound(1.0, tone_hz=440)], ext="flac")
    return {
        "empty": (b"", "wav"),
        "garbage": (b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4, "wav"),
        "truncated": (good[:60], "flac"),
        "hours_claimed": (flac_claiming(5 * 3600.0), "flac"),
        "all_nan": (nan_wav(1.0), "wav"),
        "unknown_codec": (wav_with_format_tag(0x1234), "wav"),
        "no_audio_stream": (make_video([Scene(1.0, "red")], fps=10), "m4a"),
    }


def awkward_audio() -> dict[str, tuple[bytes, str]]:
    """Valid but unusual audio, by name, as (bytes, extension): each decodes to a normalised
    mono waveform (a WAV header claiming hours over half a second of data, which libsndfile
    measures by the file, a 96 kHz 8-channel file, samples beyond full scale, some NaN, silence)."""
    return {
        "wav_claiming_hours": (wav_header_claiming(5 * 3600.0), "wav"),
        "96k_8ch": (make_audio([Sound(1.0, tone_hz=440)], rate=96000, ext="wav", channels=8), "wav"),
        "overs": (encode_audio(1.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000), 16000, "wav", subtype="FLOAT"), "wav"),
        "some_nan": (nan_wav(1.0, share=0.25), "wav"),
        "silence": (make_audio([Sound(1.0)], ext="flac"), "flac"),
        "clipped": (encode_audio(np.clip(1.8 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000), -1, 1), 16000, "wav"), "wav"),
    }


def audio_spec(index: int, seconds: float = 2.0, speech: bool = False) -> tuple[list[Sound], str, dict]:
    """Test clip number `index`: a tone over noise (tones rotated by index) or a spoken sentence
    after half a second of room noise; with its AltText and record metadata (title, tags, description)."""
    hz, words = TONES[index % len(TONES)]
    if speech:
        sentence = SENTENCES[index % len(SENTENCES)]
        sounds = [Sound(0.5, noise=True, amplitude=0.05), Sound(text=sentence)]
        return sounds, f"a person speaking: {sentence}", {
            "title": f"Voice memo {index}", "tags": ["speech", "voice"], "description": "A short spoken sentence.",
            "sentence": sentence}
    sounds = [Sound(seconds / 2, tone_hz=hz, noise=True), Sound(seconds / 2, tone_hz=hz)]
    return sounds, f"a {words} at {hz:.0f} hertz", {
        "title": f"Test tone {index}", "tags": ["tone", words], "description": f"A {words} over noise, then alone.",
        "tone_hz": hz}


def audio_items(n: int, start: int = 0, prefix: str = "snd", ext: str = "flac", rate: int = 16000,
                **options) -> Iterator:
    """n test clips as shard items (`capmill.testing.Item`), keys `{prefix}{i:04d}`; options go to
    `audio_spec` (seconds, speech)."""
    from capmill.testing.shards import Item

    for i in range(start, start + n):
        sounds, alt, meta = audio_spec(i, **options)
        key = f"{prefix}{i:04d}"
        yield Item(key, make_audio(sounds, rate=rate, ext=ext), ext, alt, {"key": key, **meta})


def write_audio_webdataset(directory, shards: int = 1, per_shard: int = 4, hostile: bool = False, **options) -> list[str]:
    """`shards` tar files of test clips (`KEY.flac` + `KEY.txt` + `KEY.json` with title, tags and
    description); with `hostile`, the last shard also holds every bad file of `hostile_audio`."""
    from capmill.testing.shards import Item, write_tar

    paths = []
    for s in range(shards):
        samples = list(audio_items(per_shard, start=s * per_shard, **options))
        if hostile and s == shards - 1:
            samples += [Item(f"bad_{name}", data, ext, f"hostile audio {name}", {})
                        for name, (data, ext) in hostile_audio().items()]
        paths.append(write_tar(os.path.join(os.fspath(directory), f"{s:05d}.tar"), samples))
    return paths


def write_audio_folder(directory, n: int = 3, **options) -> str:
    """A folder of test clips with `.txt` sidecars."""
    from capmill.testing.shards import write_folder

    return write_folder(directory, audio_items(n, **options))
