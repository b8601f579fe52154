"""Audio samples decoded with hygiene: every format, windows, resampling, mixdown, bad input."""

import tracemalloc

import numpy as np
import pytest

from capmill.errors import AudioDecodeError
from capmill.media.audio import AudioConfig, decode_audio, resample, wav_bytes
from capmill.media.decode import decode_batch
from capmill.media.image import ImageConfig
from capmill.sample import Clip, MediaRef, Sample
from capmill.testing.audio import (
    Sound,
    awkward_audio,
    dominant_hz,
    encode_audio,
    hostile_audio,
    make_audio,
    render,
)

AT_16K = AudioConfig(rate=16000)


def ref(data, ext, **kw):
    return MediaRef(data=data, ext=ext, kind="audio", **kw)


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3", "m4a"])
def test_every_format_decodes_to_its_tones_in_place(ext):
    data = make_audio([Sound(1.0, tone_hz=440), Sound(1.0, tone_hz=880)], ext=ext)
    wave, info = decode_audio(ref(data, ext), AT_16K)
    assert wave.rate == 16000 and wave.samples.dtype == np.float32 and wave.samples.ndim == 1
    assert wave.seconds == pytest.approx(2.0, abs=0.01)
    assert dominant_hz(wave.samples[2000:14000], 16000) == pytest.approx(440, abs=3)
    assert dominant_hz(wave.samples[18000:30000], 16000) == pytest.approx(880, abs=3)
    assert info.decoder == ("pyav" if ext == "m4a" else "soundfile")


@pytest.mark.parametrize("ext", ["flac", "m4a"])
def test_a_clip_window_decodes_its_own_seconds(ext):
    data = make_audio([Sound(1.0, tone_hz=440), Sound(1.0, tone_hz=880), Sound(1.0, tone_hz=660)], ext=ext)
    wave, _ = decode_audio(ref(data, ext, clip=Clip("s", 1, 1.0, 2.0, 0.0)), AT_16K)
    assert wave.seconds == pytest.approx(1.0, abs=0.001)
    assert dominant_hz(wave.samples, 16000) == pytest.approx(880, abs=3)


def test_resampled_to_the_configured_rate_without_aliasing():
    # 7 kHz at 44.1 kHz: down to 8 kHz it lies above Nyquist (4 kHz) and must be filtered out,
    # where plain interpolation would fold it back to 1 kHz.
    data = make_audio([Sound(1.0, tone_hz=7000, amplitude=0.5)], rate=44100, ext="wav")
    wave, _ = decode_audio(ref(data, "wav"), AudioConfig(rate=8000))
    assert len(wave.samples) == 8000
    assert np.sqrt(np.mean(wave.samples[400:-400] ** 2)) < 0.01
    up, _ = decode_audio(ref(make_audio([Sound(1.0, tone_hz=440)], rate=22050, ext="flac"), "flac"), AudioConfig())
    assert up.rate == 48000 and len(up.samples) == 48000 and dominant_hz(up.samples, 48000) == pytest.approx(440, abs=3)


def test_channels_are_mixed_down_to_their_mean():
    left = render([Sound(1.0, tone_hz=440)], 16000)
    right = render([Sound(1.0, tone_hz=880)], 16000)
    data = encode_audio(np.stack([left, right], axis=1), 16000, "wav", subtype="FLOAT")
    wave, info = decode_audio(ref(data, "wav"), AT_16K)
    assert info.channels == 2
    np.testing.assert_allclose(wave.samples, (left + right) / 2, atol=1e-6)


def test_96k_8_channels_normalised():
    data, ext = awkward_audio()["96k_8ch"]
    wave, info = decode_audio(ref(data, ext), AudioConfig())
    assert (info.rate, info.channels) == (96000, 8) and wave.rate == 48000 and wave.seconds == pytest.approx(1.0)
    assert dominant_hz(wave.samples, 48000) == pytest.approx(440, abs=3)


def test_memory_is_bounded_by_a_block_and_the_output():
    data = make_audio([Sound(8.0, tone_hz=440)], rate=96000, ext="wav", channels=8)
    tracemalloc.start()
    wave, _ = decode_audio(ref(data, "wav"), AudioConfig())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # The whole file as float32 would be 8 s × 96000 × 8 × 4 = 24.6 MB; mixed down block by block
    # it costs one block (64k frames × 8 channels, 2 MB) besides the 48 kHz output.
    assert peak < 4 * 2**20 + 2 * wave.samples.nbytes


def test_overs_and_nan_are_normalised_and_counted():
    awkward = awkward_audio()
    overs, info = decode_audio(ref(*awkward["overs"]), AT_16K)
    assert info.clipped > 0 and float(np.abs(overs.samples).max()) <= 1.0
    some_nan, info = decode_audio(ref(*awkward["some_nan"]), AT_16K)
    assert info.non_finite == 4000 and np.isfinite(some_nan.samples).all()
    assert info.to_meta()["non_finite"] == 4000
    silent, _ = decode_audio(ref(*awkward["silence"]), AT_16K)
    assert silent.seconds == pytest.approx(1.0) and not silent.samples.any()


def test_a_wav_header_claiming_hours_is_measured_by_its_data():
    wave, info = decode_audio(ref(*awkward_audio()["wav_claiming_hours"]), AT_16K)
    assert wave.seconds == pytest.approx(0.5, abs=0.01) and info.duration == pytest.approx(0.5, abs=0.01)


EXPECTED = {
    "empty": "empty file",
    "garbage": "unsupported or corrupt audio",
    "truncated": "unsupported or corrupt audio",
    "hours_claimed": "its header claims 18000.0 s",
    "all_nan": "NaN or infinite",
    "unknown_codec": "unsupported audio codec",
    "no_audio_stream": "no audio stream",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_audio_is_refused_with_its_reason(name):
    data, ext = hostile_audio()[name]
    with pytest.raises(AudioDecodeError, match=EXPECTED[name]):
        decode_audio(ref(data, ext), AT_16K)


def test_too_long_is_refused_or_truncated_as_configured():
    data = make_audio([Sound(3.0, tone_hz=440)], ext="flac")
    with pytest.raises(AudioDecodeError, match="too long.*input.clips"):
        decode_audio(ref(data, "flac"), AudioConfig(rate=16000, max_seconds=2.0))
    wave, info = decode_audio(ref(data, "flac"), AudioConfig(rate=16000, max_seconds=2.0, too_long="truncate"))
    assert wave.seconds == pytest.approx(2.0) and info.truncated and info.to_meta()["truncated"]
    # A stream that states no length (raw ADTS AAC) is measured as it is read.
    m4a = make_audio([Sound(3.0, tone_hz=440)], ext="m4a")
    with pytest.raises(AudioDecodeError, match="too long"):
        decode_audio(ref(m4a, "m4a"), AudioConfig(rate=16000, max_seconds=2.0))


def test_header_limits_refuse_before_decoding():
    data = make_audio([Sound(0.5, tone_hz=440)], rate=96000, ext="wav", channels=3)
    with pytest.raises(AudioDecodeError, match="3 channels is over the limit of 2"):
        decode_audio(ref(data, "wav"), AudioConfig(max_channels=2))
    with pytest.raises(AudioDecodeError, match="96000 Hz is over the limit"):
        decode_audio(ref(data, "wav"), AudioConfig(max_source_rate=48000))


def test_both_decoders_give_the_same_waveform():
    data = make_audio([Sound(1.0, tone_hz=440, noise=True)], rate=22050, ext="wav", channels=2)
    a, _ = decode_audio(ref(data, "wav"), AudioConfig(rate=16000, decoder="soundfile"))
    b, _ = decode_audio(ref(data, "wav"), AudioConfig(rate=16000, decoder="pyav"))
    np.testing.assert_allclose(a.samples, b.samples, atol=1e-4)


def test_the_decode_step_records_facts_and_reasons(tmp_path):
    good = tmp_path / "tone.ogg"
    good.write_bytes(make_audio([Sound(1.5, tone_hz=440)], ext="ogg"))
    samples = [Sample("ok", image=MediaRef(path=str(good), ext="ogg", kind="audio")),
               Sample("bad", image=ref(*hostile_audio()["all_nan"]))]
    decode_batch(samples, ImageConfig().with_audio(AudioConfig(rate=16000)))
    ok, bad = samples
    assert ok.ok and ok.media.audio.rate == 16000 and ok.media.audio.seconds == pytest.approx(1.5, abs=0.01)
    assert ok.meta["audio"]["codec"] == "vorbis" and ok.meta["audio"]["seconds"] == pytest.approx(1.5, abs=0.01)
    assert bad.status == "decode_error" and "NaN" in bad.error
    off = [Sample("off", image=ref(make_audio([Sound(0.5)], ext="wav"), "wav"))]
    decode_batch(off, ImageConfig().with_audio(AudioConfig(decode=False)))
    assert off[0].ok and off[0].media.audio is None


def test_resample_and_wav_bytes_round_trip():
    tone = render([Sound(1.0, tone_hz=440)], 22050)
    out = resample(tone, 22050, 16000)
    assert len(out) == 16000 and dominant_hz(out, 16000) == pytest.approx(440, abs=2)
    back, _ = decode_audio(ref(wav_bytes(out, 16000), "wav"), AT_16K)
    np.testing.assert_allclose(back.samples, out, atol=1 / 16000)
