"""Forced logits and yes/no answers of the transformers backend, on the tiny models."""

import pytest

from capmill.backends.base import AskingVisionLanguageModel, AskRequest, ContrastiveVisionLanguageModel, ForcedRequest
from tests.backends.test_transformers import _backend, _images


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3"])
def test_forced_logits_batched_equal_one_by_one(tiny_models, family):
    backend = _backend(tiny_models, family)
    assert isinstance(backend, ContrastiveVisionLanguageModel)
    images = _images(3)
    requests = [ForcedRequest(images[0], "Describe the image.", "a red dog on grass"),
                ForcedRequest(images[1], "Describe the image in detail please.", "two cats"),
                ForcedRequest(None, "Describe.", "a tree near a river and a small house"),
                ForcedRequest(images[2], "Describe.", "")]
    together = backend.forced_logits(requests)
    alone = [backend.forced_logits([r])[0] for r in requests]
    for t, a in zip(together, alone):
        assert t.error is None and t.token_ids == a.token_ids
        assert t.with_image == pytest.approx(a.with_image, abs=1e-4)
        assert t.without_image == pytest.approx(a.without_image, abs=1e-4)
    assert together[0].with_image != together[0].without_image
    assert together[2].with_image == together[2].without_image  # no image: both passes are text-only
    assert together[3].tokens == [] and together[3].error is None
    assert "".join(together[1].tokens) == "two cats"


@pytest.mark.parametrize("family", ["llava", "idefics3", "qwen2_vl"])
def test_ask_gives_a_probability_batched_like_one_by_one(tiny_models, family):
    import torch

    backend = _backend(tiny_models, family)
    assert isinstance(backend, AskingVisionLanguageModel)
    images = _images(2)
    requests = [AskRequest(images[0], "Is there a dog? Answer yes or no."),
                AskRequest(images[1], "Is the sky blue? Answer yes or no."),
                AskRequest(images[0], "Is it raining? Answer yes or no.")]
    together = backend.ask(requests)
    alone = [backend.ask([r])[0] for r in requests]
    for t, a in zip(together, alone):
        assert t.ok and 0.0 < t.p_yes < 1.0 and t.source == "logits"
        assert t.p_yes == pytest.approx(a.p_yes, abs=1e-4)
    # the value is the model's own: softmax over the yes/no first tokens of one forward pass
    from capmill.backends.base import VLMRequest
    from capmill.backends.transformers_scoring import answer_ids

    inputs = backend._to_device(dict(backend._vlm_inputs([VLMRequest(prompt=requests[0].question, images=[images[0]])])))
    inputs.pop("capmill_shared_images", None)
    with torch.inference_mode():
        logp = torch.log_softmax(backend.model(**inputs).logits[0, -1].float(), -1)
    yes_ids, no_ids = answer_ids(backend.tokenizer)
    yes, no = torch.logsumexp(logp[yes_ids], -1), torch.logsumexp(logp[no_ids], -1)
    assert together[0].p_yes == pytest.approx(float(torch.sigmoid(yes - no)), abs=1e-5)


def test_a_request_that_fails_costs_only_itself(tiny_models):
    backend = _backend(tiny_models, "idefics3")
    from PIL import Image

    broken = Image.new("P", (4, 4))  # a palette image is converted, not refused
    good = backend.forced_logits([ForcedRequest(_images(1)[0], "Describe.", "a dog")])[0]
    assert good.error is None
    answers = backend.ask([AskRequest(_images(1)[0], "Is there a dog?"), AskRequest(broken, "Is there a dog?")])
    assert answers[0].ok and answers[1].ok


def test_text_models_refuse(tiny_models):
    from capmill.errors import ConfigError

    backend = _backend(tiny_models, "qwen2_lm")
    with pytest.raises(ConfigError, match="chat vision-language model"):
        backend.ask([AskRequest(_images(1)[0], "Is there a dog?")])
