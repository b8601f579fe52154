"""BLIP image–text matching (the TL;DR "better half" score) on the tiny random BLIP ITM model."""

import numpy as np
import pytest

from capmill.backends.base import ImageTextMatcher
from capmill.backends.itm import BlipItmConfig
from capmill.testing import generated


def test_blip_itm_is_the_softmax_of_transformers_own_itm_head(tiny_models):
    import torch
    from transformers import AutoProcessor, BlipForImageTextRetrieval

    matcher = BlipItmConfig(model=str(tiny_models / "blip_itm"), device="cpu", batch_size=2).build()
    assert isinstance(matcher, ImageTextMatcher)
    matcher.load()
    images = [generated(i, (40, 30)) for i in range(3)]
    texts = ["a red dog on the grass", "two people near a car", "a small wooden table in a room with a window"]
    probs = matcher.match(images, texts)
    assert probs.shape == (3,) and probs.dtype == np.float32 and np.all((probs >= 0) & (probs <= 1))

    processor = AutoProcessor.from_pretrained(tiny_models / "blip_itm")
    model = BlipForImageTextRetrieval.from_pretrained(tiny_models / "blip_itm").eval()
    expected = []
    for image, text in zip(images, texts):
        inputs = processor(images=image, text=text, truncation=True, max_length=35, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs, use_itm_head=True).itm_score
        expected.append(torch.softmax(logits, dim=-1)[0, 1].item())
    assert probs == pytest.approx(expected, abs=1e-5)  # batched with padding = one by one
    with pytest.raises(ValueError, match="one text per image"):
        matcher.match(images, texts[:2])
    matcher.close()
