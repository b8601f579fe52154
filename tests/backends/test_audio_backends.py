"""Audio through the backends: Qwen2-Audio (tiny, random) through transformers, CLAP (tiny,
random) as a scorer, `input_audio` to OpenAI-compatible servers, and the fake test double."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from capmill.backends.base import (
    AudioInput,
    AudioTextScorer,
    GenerationParams,
    ImageTextScorer,
    VLMRequest,
)
from capmill.backends.clap import ClapScorerConfig, windows
from capmill.backends.fake import FakeBackend, FakeBackendConfig
from capmill.backends.transformers import TransformersConfig
from capmill.errors import ConfigError
from capmill.sample import Waveform
from capmill.testing.audio import Sound, dominant_hz, render


@pytest.fixture(scope="module", autouse=True)
def _threads():
    import torch

    torch.set_num_threads(1)


def _audio(hz=440.0, seconds=2.0, rate=48000):
    samples = render([Sound(seconds, tone_hz=hz)], rate)
    return AudioInput(samples=samples, rate=rate, seconds=seconds)


def _backend(tiny_models, family, **kw):
    backend = TransformersConfig(model=str(tiny_models / family), params=GenerationParams(max_new_tokens=4), **kw).build()
    backend.load()
    return backend


@pytest.mark.slow
def test_qwen2_audio_hears_the_waveform_at_its_own_rate(tiny_models, monkeypatch):
    backend = _backend(tiny_models, "qwen2_audio")
    assert backend.takes_audio and not backend.vision
    seen = {}
    call = backend.processor.__class__.__call__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(backend.processor.__class__, "__call__", spy)
    gens = backend.generate([VLMRequest(prompt="Describe the sound.", audio=_audio(440, 2.0), tag="a")])
    assert gens[0].ok and gens[0].meta["prompt_tokens"] > 40  # the audio's tokens are in the prompt
    assert seen["sampling_rate"] == 16000 and len(seen["audio"][0]) == 32000  # 48 kHz resampled to 16 kHz
    assert dominant_hz(seen["audio"][0], 16000) == pytest.approx(440, abs=3)
    assert "<|AUDIO|>" in backend.render(VLMRequest(prompt="x", audio=_audio()))


def test_batched_audio_requests_match_one_by_one(tiny_models):
    backend = _backend(tiny_models, "qwen2_audio")
    requests = [VLMRequest(prompt="Describe the sound.", audio=_audio(440, 2.0), tag="a"),
                VLMRequest(prompt="What is making this sound?", audio=_audio(880, 1.0), tag="b"),
                VLMRequest(prompt="Describe the sound.", audio=_audio(660, 3.0), tag="c")]
    together = backend.generate(requests)
    alone = [backend.generate([r])[0] for r in requests]
    assert all(g.ok for g in together) and [g.texts for g in together] == [g.texts for g in alone]


def test_beams_give_candidates_and_long_audio_is_noted(tiny_models):
    backend = _backend(tiny_models, "qwen2_audio")
    gen = backend.generate([VLMRequest(prompt="Describe.", audio=_audio(440, 31.0, rate=16000), n=3,
                                       params=GenerationParams(max_new_tokens=3, num_beams=3))])[0]
    assert len(gen.texts) == 3 and gen.meta["audio_seconds_heard"] == 30.0


def test_models_refuse_media_they_cannot_take(tiny_models):
    audio_model = _backend(tiny_models, "qwen2_audio")
    with pytest.raises(ConfigError, match="takes no images"):
        audio_model.generate([VLMRequest(prompt="x", images=[Image.new("RGB", (32, 32))])])
    vision_model = _backend(tiny_models, "idefics3")
    assert not vision_model.takes_audio
    with pytest.raises(ConfigError, match="takes no audio.*media: audio"):
        vision_model.generate([VLMRequest(prompt="x", audio=_audio())])


def test_clap_embeds_audio_and_text_normalised_and_batch_independent(tiny_models):
    scorer = ClapScorerConfig(model=str(tiny_models / "clap"), batch_size=2).build()
    scorer.load()
    assert isinstance(scorer, AudioTextScorer) and not isinstance(scorer, ImageTextScorer)
    waves = [Waveform(render([Sound(2.0, tone_hz=hz, noise=True)], 16000, seed=i), 16000) for i, hz in enumerate((220, 440, 880))]
    together = scorer.embed_audio(waves)
    alone = np.concatenate([scorer.embed_audio([w]) for w in waves])
    assert together.shape == (3, 32) and np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert not np.allclose(together[0], together[1])
    texts = scorer.embed_texts(["a dog barks", "rain on a roof", "a dog barks"])
    assert np.allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5) and np.allclose(texts[0], texts[2])
    # The same sound at another rate lands close to where it did (resampled to the model's 48 kHz).
    low, high = (scorer.embed_audio([Waveform(render([Sound(2.0, tone_hz=220)], rate), rate)])[0] for rate in (16000, 48000))
    assert float(low @ high) > 0.99


def test_clap_takes_long_audio_as_the_mean_of_its_windows(tiny_models):
    scorer = ClapScorerConfig(model=str(tiny_models / "clap")).build()
    scorer.load()
    first = render([Sound(10.0, tone_hz=440)], 48000)
    second = render([Sound(10.0, tone_hz=880, noise=True)], 48000)
    whole = scorer.embed_audio([Waveform(np.concatenate([first, second]), 48000)])[0]
    parts = scorer.embed_audio([Waveform(first, 48000), Waveform(second, 48000)])
    mean = parts.mean(axis=0)
    np.testing.assert_allclose(whole, mean / np.linalg.norm(mean), atol=1e-5)
    # The same input gives the same embedding every time (no random crop).
    np.testing.assert_array_equal(whole, scorer.embed_audio([Waveform(np.concatenate([first, second]), 48000)])[0])


def test_clap_max_seconds_hears_the_start_of_each_clip(tiny_models):
    scorer = ClapScorerConfig(model=str(tiny_models / "clap"), max_seconds=10).build()
    scorer.load()
    first = render([Sound(10.0, tone_hz=440)], 48000)
    later = render([Sound(8.0, tone_hz=880, noise=True)], 48000)
    whole = scorer.embed_audio([Waveform(np.concatenate([first, later]), 48000)])[0]
    np.testing.assert_allclose(whole, scorer.embed_audio([Waveform(first, 48000)])[0], atol=1e-6)


def test_clap_windows_drop_only_a_short_tail():
    assert [len(w) for w in windows(np.zeros(25), 10, 3)] == [10, 10, 5]
    assert [len(w) for w in windows(np.zeros(21), 10, 3)] == [10, 10]
    assert [len(w) for w in windows(np.zeros(2), 10, 3)] == [2]


def test_fake_answers_audio_by_key_prompt_and_seconds():
    fake = FakeBackend(FakeBackendConfig())
    a = fake.generate([VLMRequest(prompt="p", audio=_audio(440, 2.0), tag="k")])[0]
    again = fake.generate([VLMRequest(prompt="p", audio=_audio(880, 2.0), tag="k")])[0]
    longer = fake.generate([VLMRequest(prompt="p", audio=_audio(440, 3.0), tag="k")])[0]
    assert a.texts == again.texts and a.texts != longer.texts and a.meta["seconds"] == 2.0
    assert isinstance(fake, AudioTextScorer)
    emb = fake.embed_audio([Waveform(_audio(440).samples, 48000), Waveform(_audio(880).samples, 48000)])
    assert emb.shape == (2, 32) and not np.allclose(emb[0], emb[1])


def test_openai_sends_audio_as_input_audio_wav():
    pytest.importorskip("aiohttp")
    from capmill.backends.openai_http import OpenAIBackendConfig
    from capmill.backends.openai_wire import input_audio, vlm_messages
    from capmill.media.audio import AudioConfig, decode_audio
    from capmill.sample import MediaRef
    from capmill.testing.fault_server import FaultServer

    part = input_audio(_audio(440, 2.0), 16000, 10**7)
    messages = vlm_messages(VLMRequest(prompt="Describe."), [], audio_part=part)
    content = messages[-1]["content"]
    assert content[0]["type"] == "input_audio" and content[0]["input_audio"]["format"] == "wav"
    assert content[-1] == {"type": "text", "text": "Describe."}
    wav = base64.b64decode(content[0]["input_audio"]["data"])
    wave, info = decode_audio(MediaRef(data=wav, ext="wav", kind="audio"), AudioConfig(rate=16000))
    assert info.rate == 16000 and wave.seconds == pytest.approx(2.0) and dominant_hz(wave.samples, 16000) == pytest.approx(440, abs=3)
    with pytest.raises(ValueError, match="max_audio_bytes"):
        input_audio(_audio(), 16000, 100)
    with FaultServer() as server:
        backend = OpenAIBackendConfig.model_validate({"type": "openai", "base_url": server.base_url, "model": server.model,
                                                      "max_audio_bytes": 50000}).build()
        backend.load()
        gens = backend.generate([VLMRequest(prompt="a", audio=_audio(440, 1.0)), VLMRequest(prompt="b", audio=_audio(440, 5.0))])
        backend.close()
    assert gens[0].ok and not gens[1].ok and "max_audio_bytes" in gens[1].error
    assert io.BytesIO(wav).read(4) == b"RIFF"


def test_the_in_process_vllm_backend_refuses_audio_rather_than_caption_the_prompt():
    from capmill.backends.vllm import VLLMBackendConfig

    backend = VLLMBackendConfig(model="Qwen/Qwen2-Audio-7B-Instruct").build()  # never loaded: refused first
    with pytest.raises(ConfigError, match="takes no audio.*type: openai"):
        backend.generate([VLMRequest(prompt="x", audio=_audio())])


@pytest.mark.gpu
def test_audio_backends_on_a_gpu(tiny_models):
    """Qwen2-Audio in half precision and CLAP on CUDA give what the CPU gives (tiny models)."""
    from tests.conftest import cuda_available

    if not cuda_available():
        pytest.skip("needs a CUDA GPU")
    import torch

    gpu = _backend(tiny_models, "qwen2_audio", device="cuda")
    assert gpu.dtype in (torch.bfloat16, torch.float16)
    requests = [VLMRequest(prompt="Describe the sound.", audio=_audio(hz, 2.0), tag=str(hz)) for hz in (440, 880)]
    assert all(g.ok and g.texts[0] for g in gpu.generate(requests))
    on_gpu = ClapScorerConfig(model=str(tiny_models / "clap"), device="cuda").build()
    on_cpu = ClapScorerConfig(model=str(tiny_models / "clap"), device="cpu").build()
    on_gpu.load()
    on_cpu.load()
    waves = [Waveform(render([Sound(12.0, tone_hz=hz, noise=True)], 48000), 48000) for hz in (220, 660)]
    np.testing.assert_allclose(on_gpu.embed_audio(waves), on_cpu.embed_audio(waves), atol=2e-3)
    np.testing.assert_allclose(on_gpu.embed_texts(["a dog barks"]), on_cpu.embed_texts(["a dog barks"]), atol=2e-3)
