"""The transformers backend on the tiny models: real loading, batching, candidates, logits."""

import pytest
from PIL import Image

from capmill.backends.base import ChatRequest, GenerationParams, LanguageModel, VisionLanguageModel, VLMRequest
from capmill.backends.transformers import TransformersConfig

VLM_FAMILIES = ["llava", "qwen2_vl", "idefics3", "blip"]


@pytest.fixture(scope="module", autouse=True)
def _threads():
    import torch

    torch.set_num_threads(1)


def _images(k):
    return [Image.new("RGB", (160 + 7 * i, 120), ((37 * i) % 256, 90, 200 - 11 * i)) for i in range(k)]


def _backend(tiny_models, family, **kw):
    backend = TransformersConfig(model=str(tiny_models / family), params=GenerationParams(max_new_tokens=5), **kw).build()
    backend.load()
    return backend


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_batched_greedy_equals_one_by_one(tiny_models, family):
    backend = _backend(tiny_models, family, batch_size=8)
    assert isinstance(backend, VisionLanguageModel)
    # Prompts of different lengths, so left padding matters.
    requests = [VLMRequest(prompt="Describe it." + " Be brief." * i, images=[img], tag=str(i))
                for i, img in enumerate(_images(4))]
    together = backend.generate(requests)
    alone = [backend.generate([r])[0] for r in requests]
    assert all(g.ok for g in together)
    assert [g.texts for g in together] == [g.texts for g in alone]
    assert together[0].meta["completion_tokens"][0] >= 1


@pytest.mark.parametrize("sizes", ["same", "mixed"])
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_an_image_shared_by_several_formats_is_preprocessed_once(tiny_models, family, sizes):
    import torch

    from capmill.backends.transformers import SHARED_IMAGES

    backend = _backend(tiny_models, family, batch_size=16)
    dims = [(160, 120)] * 3 if sizes == "same" else [(160, 120), (90, 200), (64, 64)]
    images = [Image.new("RGB", d, c) for d, c in zip(dims, [(200, 30, 30), (20, 160, 60), (10, 10, 240)])]
    # Three formats of each image, every request of an image carrying the same object.
    requests = [VLMRequest(prompt=f"Format {f}: describe.", images=[im]) for im in images for f in range(3)]
    wrapper = backend.processor.image_processor
    inner = wrapper.inner

    class Counting:  # the model's processor, counting its calls
        calls = 0

        def __call__(self, *args, **kwargs):
            Counting.calls += 1
            return inner(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(inner, name)

    wrapper.inner = Counting()
    # Idefics3 pads tiles across a batch: with mixed sizes (3 and 5 tiles here) the first batch
    # also runs the processor whole, to check that zero-padding gives the same; later ones do not.
    backend._vlm_inputs(requests)
    assert Counting.calls == 3 + (family == "idefics3" and sizes == "mixed")
    assert wrapper.pads_with_zeros is (True if family == "idefics3" and sizes == "mixed" else None)
    Counting.calls = 0
    shared = backend._vlm_inputs(requests)
    assert Counting.calls == 3 and SHARED_IMAGES in shared  # once per distinct image, not per request
    shared_texts = [g.texts for g in backend.generate(requests)]
    backend.processor.image_processor = inner  # the model's own processor over the whole batch
    whole, whole_texts = backend._vlm_inputs(requests), [g.texts for g in backend.generate(requests)]
    shared.pop(SHARED_IMAGES)
    assert set(shared.keys()) == set(whole.keys())
    for key in whole:
        assert torch.equal(shared[key], whole[key]), key
    assert shared_texts == whole_texts


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3"])
@pytest.mark.parametrize("sizes", ["same", "mixed"])
def test_the_formats_of_one_image_share_one_vision_encoding(tiny_models, family, sizes, monkeypatch):
    import functools
    import inspect

    import numpy as np
    import torch

    from capmill.backends.transformers import SHARED_IMAGES

    backend = _backend(tiny_models, family, batch_size=16)
    rng = np.random.default_rng(0)
    dims = [(120, 160)] * 3 if sizes == "same" else [(120, 160), (200, 90), (64, 64)]
    images = [Image.fromarray(rng.integers(0, 255, (*d, 3), dtype=np.uint8)) for d in dims]
    requests = [VLMRequest(prompt=f"Format {f}: describe.", images=[im]) for im in images for f in range(3)]
    backend._vlm_inputs(requests)  # lets Idefics3's wrapper check zero-padding on mixed tile counts
    inputs = backend._vlm_inputs(requests)
    shared = inputs.pop(SHARED_IMAGES)
    assert len(shared.parts) == 3 and shared.index == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    inputs = backend._to_device(inputs)
    encoder = backend.model.base_model.get_image_features
    keys = [k for k in inspect.signature(encoder).parameters if k in inputs]
    seen = []

    @functools.wraps(encoder)  # keeps the signature generate and the backend read
    def spy(**kwargs):
        seen.append(kwargs["pixel_values"].numel())
        return encoder(**kwargs)

    monkeypatch.setattr(backend.model.base_model, "get_image_features", spy)
    with torch.inference_mode():
        model_inputs = backend._encode_shared_images(inputs, shared)
        every = encoder(**{k: inputs[k] for k in keys}, return_dict=True).pooler_output
    assert model_inputs is not None and not set(keys) & set(model_inputs)
    assert seen == [inputs["pixel_values"].numel() // 3]  # the vision tower saw each image once
    features = model_inputs["mm_encoder_outputs"]["image"].pooler_output
    assert len(features) == len(every) == 9
    for mine, theirs in zip(features, every):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    monkeypatch.undo()
    together = [g.texts for g in backend.generate(requests)]
    monkeypatch.setattr(backend, "_encode_shared_images", lambda inputs, shared: None)  # generate encodes all
    assert [g.texts for g in backend.generate(requests)] == together


@pytest.mark.parametrize("family", ["qwen2_vl", "blip"])
def test_n_candidates_greedy_and_sampled(tiny_models, family):
    backend = _backend(tiny_models, family)
    [greedy] = backend.generate([VLMRequest(prompt="Describe it.", images=_images(1), n=3)])
    assert len(greedy.texts) == 3
    sampled = GenerationParams(max_new_tokens=5, temperature=1.0, top_p=0.95, seed=7)
    [a] = backend.generate([VLMRequest(prompt="Describe it.", images=_images(1), n=2, params=sampled)])
    [b] = backend.generate([VLMRequest(prompt="Describe it.", images=_images(1), n=2, params=sampled)])
    assert len(a.texts) == 2 and a.texts == b.texts  # the seed makes sampling reproducible


def test_mixed_decoding_settings_in_one_batch(tiny_models):
    backend = _backend(tiny_models, "llava")
    long = GenerationParams(max_new_tokens=8)
    requests = [VLMRequest(prompt="A.", images=_images(1), n=1),
                VLMRequest(prompt="B.", images=_images(1), n=2, params=long)]
    first, second = backend.generate(requests)
    assert len(first.texts) == 1 and len(second.texts) == 2
    assert first.meta["completion_tokens"][0] <= 5 and max(second.meta["completion_tokens"]) <= 8


def test_one_bad_request_does_not_cost_the_batch(tiny_models):
    backend = _backend(tiny_models, "blip")
    requests = [VLMRequest(prompt="x", images=_images(1)), VLMRequest(prompt="x", images=_images(2))]
    good, bad = backend.generate(requests)
    assert good.ok
    assert bad.error and not bad.ok


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3"])
def test_token_logits_with_and_without_image(tiny_models, family):
    backend = _backend(tiny_models, family)
    out = backend.token_logits(_images(1)[0], "Describe the image.", "a red dog on grass")
    k = len(out.token_ids)
    assert k >= 3 and len(out.tokens) == len(out.with_image) == len(out.without_image) == k
    assert "".join(out.tokens) == "a red dog on grass"
    assert out.with_image != out.without_image
    # The forced logits are the model's own: the logit of the first token equals what a plain
    # forward pass over the prompt gives for it.
    import torch

    inputs = backend._to_device(dict(backend._vlm_inputs([VLMRequest(prompt="Describe the image.")])))
    with torch.inference_mode():
        last = backend.model(**inputs).logits[0, -1]
    assert float(last[out.token_ids[0]]) == pytest.approx(out.without_image[0], abs=1e-4)


@pytest.mark.parametrize("family", ["qwen2_lm", "llama_lm", "qwen2_vl"])
def test_chat_models_batch_like_one_by_one(tiny_models, family):
    backend = _backend(tiny_models, family)
    assert isinstance(backend, LanguageModel)
    requests = [ChatRequest(messages=[{"role": "system", "content": "Merge the captions."},
                                      {"role": "user", "content": "a dog " * (i + 1)}]) for i in range(3)]
    together = backend.chat(requests)
    assert [g.texts for g in together] == [backend.chat([r])[0].texts for r in requests]
    assert all(len(g.texts) == 1 for g in together)


def test_text_model_refuses_to_caption(tiny_models):
    from capmill.errors import ConfigError

    backend = _backend(tiny_models, "qwen2_lm")
    with pytest.raises(ConfigError, match="vision-language"):
        backend.generate([VLMRequest(prompt="x", images=_images(1))])


def test_large_images_are_scaled_to_the_pixel_budget(tiny_models):
    backend = _backend(tiny_models, "qwen2_vl")
    big = Image.new("RGB", (4000, 3000), "white")
    fitted = backend._prepare_image(big)
    assert fitted.width * fitted.height <= backend.max_pixels < big.width * big.height
    assert abs(fitted.width / fitted.height - 4 / 3) < 0.02
    assert backend.generate([VLMRequest(prompt="x", images=[big])])[0].ok
    small = Image.new("RGB", (20, 20))
    assert backend._prepare_image(small).size == (20, 20)
