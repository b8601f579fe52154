"""Classifier-free guidance in the transformers backend: γ = 1 decodes exactly as plain decoding,
and γ ≠ 1 gives uncond + γ·(cond − uncond) of the log-probabilities, step after step, with an
unconditional branch equal to a plain forward pass over the image-free prompt."""

import pytest
import torch

from capmill.backends.base import GenerationParams, VLMRequest
from capmill.backends.guidance import ImageFreeGuidance, guided

FAMILIES = ["idefics3", "llava", "qwen2_vl"]


def _images():
    from PIL import Image

    return [Image.new("RGB", (64, 48), (200, 10, 10)), Image.new("RGB", (50, 70), (10, 200, 10))]


def _backend(tiny_models, family, **extra):
    from capmill.backends.transformers import TransformersConfig

    backend = TransformersConfig(model=str(tiny_models / family), device="cpu", **extra).build()
    backend.load()
    return backend


def _requests(params, n=1):
    first, second = _images()
    # Prompts of different lengths: the batch is left-padded, which the branch must honour.
    return [VLMRequest(prompt="Describe the picture.", images=[first], params=params, n=n, tag="a"),
            VLMRequest(prompt="Write one short caption with many small words.", images=[second], params=params, n=n,
                       tag="b")]


def test_the_formula_on_fixed_logits():
    cond = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    uncond = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    for scale in (0.0, 1.0, 2.0, 3.5):
        expected = torch.log_softmax(uncond, -1) + scale * (torch.log_softmax(cond, -1) - torch.log_softmax(uncond, -1))
        assert torch.allclose(guided(cond, uncond, scale), expected)
    # γ = 1 is the conditional distribution; γ = 0 the unconditional one
    assert torch.allclose(torch.softmax(guided(cond, uncond, 1.0), -1), torch.softmax(cond, -1))
    assert torch.allclose(torch.softmax(guided(cond, uncond, 0.0), -1), torch.softmax(uncond, -1))
    # on raw logits the formula differs by a constant per row: the same distribution
    raw = uncond + 2.0 * (cond - uncond)
    assert torch.allclose(torch.softmax(raw, -1), torch.softmax(guided(cond, uncond, 2.0), -1), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_scale_one_decodes_token_for_token_as_plain_decoding(tiny_models, family):
    backend = _backend(tiny_models, family)
    for params, n in ((GenerationParams(max_new_tokens=12), 1), (GenerationParams(max_new_tokens=12, temperature=0.8, seed=3), 2)):
        plain = [g.texts for g in backend.generate(_requests(params, n))]
        once = [g.texts for g in backend.generate(_requests(params.model_copy(update={"guidance_scale": 1.0}), n))]
        assert plain == once and all(t for texts in plain for t in texts)
    strong = [g.texts for g in backend.generate(_requests(GenerationParams(max_new_tokens=12, guidance_scale=3.0)))]
    assert strong != [g.texts for g in backend.generate(_requests(GenerationParams(max_new_tokens=12)))]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["idefics3", "qwen2_vl"])
def test_scale_changes_the_logits_as_the_formula_says(tiny_models, family, monkeypatch):
    """Every step's processed scores are uncond + γ·(cond − uncond) of the log-probabilities,
    where cond is what the model scores with the image and uncond a plain forward pass of the
    model over the image-free prompt plus the tokens chosen so far."""
    backend = _backend(tiny_models, family)
    scale = 2.5
    steps = []
    original = ImageFreeGuidance.__call__

    def spy(self, input_ids, scores):
        out = original(self, input_ids, scores)
        steps.append((input_ids.clone(), scores.clone(), self.last_uncond.clone(), out.clone()))
        return out

    monkeypatch.setattr(ImageFreeGuidance, "__call__", spy)
    params = GenerationParams(max_new_tokens=6, guidance_scale=scale)
    reqs = _requests(params)
    gens = backend.generate(reqs)
    assert all(g.ok for g in gens) and len(steps) >= 2
    uncond_inputs = backend._guidance_inputs(reqs, params, 1)
    prompt_len = steps[0][0].shape[1]
    for input_ids, cond, uncond, out in steps:
        assert torch.allclose(out, guided(cond, uncond, scale), atol=1e-5)
        # the branch's logits equal a plain pass over the image-free prompt + the tokens so far
        generated = input_ids[:, prompt_len:]
        ids = torch.cat([uncond_inputs["input_ids"], generated], dim=1)
        mask = torch.cat([uncond_inputs["attention_mask"], torch.ones_like(generated)], dim=1)
        position_ids = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        kwargs = {"position_ids": position_ids} if family != "qwen2_vl" else {}
        with torch.inference_mode():
            plain = backend.model(input_ids=ids, attention_mask=mask, **kwargs).logits[:, -1, :]
        assert torch.allclose(uncond, plain, atol=1e-4), (family, (uncond - plain).abs().max())
        assert not torch.allclose(out, torch.log_softmax(cond.float(), -1), atol=1e-3)


@pytest.mark.slow
def test_blank_image_branch_and_refusals(tiny_models):
    backend = _backend(tiny_models, "idefics3", guidance_null="blank_image")
    plain = [g.texts for g in backend.generate(_requests(GenerationParams(max_new_tokens=8)))]
    once = [g.texts for g in backend.generate(_requests(GenerationParams(max_new_tokens=8, guidance_scale=1.0)))]
    assert plain == once
    # greedy n > 1 is beam search, which guidance does not follow: a per-request error saying so
    gens = backend.generate(_requests(GenerationParams(max_new_tokens=8, guidance_scale=2.0), n=2))
    assert all(not g.ok and "beam search" in g.error for g in gens)
    with pytest.raises(ValueError, match="not beam search"):
        GenerationParams(guidance_scale=2.0, num_beams=3)


def test_unset_guidance_keeps_the_config_hash():
    from capmill.backends.transformers import TransformersConfig

    assert "guidance_scale" not in GenerationParams().model_dump()
    assert GenerationParams(guidance_scale=2.0).model_dump()["guidance_scale"] == 2.0
    assert "guidance_null" not in TransformersConfig(model="m").model_dump()
