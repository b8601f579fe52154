"""A video's soundtrack as a mono waveform, for a whole video and for a clip's window."""

import numpy as np
import pytest

from capmill.errors import NoAudioStream
from capmill.media.audio import decode_soundtrack, resample
from capmill.sample import Clip, MediaRef
from capmill.testing.videos import Scene, VideoSpec, encode


def dominant_hz(samples, rate):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))]


def test_soundtrack_at_16k_mono_with_the_tones_in_place():
    data = encode(VideoSpec([Scene(2, "red", tone_hz=440), Scene(2, "blue", tone_hz=880)], fps=10))
    wave = decode_soundtrack(MediaRef(data=data, kind="video"))
    assert wave.rate == 16000 and wave.samples.dtype == np.float32 and wave.samples.ndim == 1
    assert wave.seconds == pytest.approx(4.0, abs=0.15)
    assert dominant_hz(wave.samples[4000:28000], 16000) == pytest.approx(440, abs=5)
    assert dominant_hz(wave.samples[36000:60000], 16000) == pytest.approx(880, abs=5)


def test_a_clip_window_gets_its_own_seconds_only():
    data = encode(VideoSpec([Scene(2, "red", tone_hz=440), Scene(2, "blue", tone_hz=880)], fps=10))
    wave = decode_soundtrack(MediaRef(data=data, kind="video", clip=Clip("v", 1, 2.0, 4.0, 0.0)))
    assert wave.seconds == pytest.approx(2.0, abs=0.1)
    assert dominant_hz(wave.samples, 16000) == pytest.approx(880, abs=5)


def test_a_silent_video_has_no_audio_stream():
    with pytest.raises(NoAudioStream):
        decode_soundtrack(MediaRef(data=encode(VideoSpec([Scene(1, "red")], fps=10)), kind="video"))


def test_resample_keeps_duration_and_pitch():
    tone = np.sin(2 * np.pi * 440 * np.arange(22050) / 22050).astype(np.float32)
    out = resample(tone, 22050, 16000)
    assert len(out) == 16000 and dominant_hz(out, 16000) == pytest.approx(440, abs=2)
