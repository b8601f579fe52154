"""CLIPScore with a tiny random CLIP: capmill's clip_score stage (through the real `clip` backend)
equals the formula computed by hand from the model's embeddings, and torchmetrics' CLIPScore
given the same model, within 1e-5, on 200 pairs."""

import pytest

from capmill.sample import Caption, Sample
from capmill.stages.base import RunContext
from capmill.testing import generated

N_PAIRS = 200
SUBJECTS = ["dog", "cat", "man", "woman", "car", "boat", "bird", "horse"]
PLACES = ["beach", "street", "field", "river", "table", "snow", "road", "bench"]


@pytest.fixture(scope="module")
def tiny_clip(request):
    from capmill import registry

    if "clip" not in registry.available(registry.BACKENDS):
        pytest.skip("the `clip` ImageTextScorer backend is not registered in this install")
    try:
        models = request.getfixturevalue("tiny_models")
    except pytest.FixtureLookupError:
        pytest.skip("the tiny_models fixture (capmill.testing.tiny_models) is not available")
    return str(models / "clip")


def pairs():
    images = [generated(i, (48, 40)) for i in range(N_PAIRS)]
    texts = [f"a {SUBJECTS[i % 8]} near the {PLACES[(i // 8) % 8]} number {i}" for i in range(N_PAIRS)]
    return images, texts


def by_hand(path, images, texts):
    """2.5·max(cos, 0) from CLIPModel's projected features, with the paper's prefix."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(path).eval()
    processor = CLIPProcessor.from_pretrained(path)
    with torch.no_grad():
        img = model.get_image_features(**processor(images=images, return_tensors="pt"))
        img = img if isinstance(img, torch.Tensor) else img.pooler_output
        tok = processor(text=["A photo depicts " + t for t in texts], return_tensors="pt", padding=True,
                        truncation=True, max_length=77)
        txt = model.get_text_features(**tok)
        txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
    cos = torch.nn.functional.cosine_similarity(img, txt).double()
    return (2.5 * cos.clamp(min=0)).tolist(), model, processor


@pytest.mark.slow
def test_clipscore_matches_formula_and_torchmetrics(tiny_clip):
    import numpy as np
    import torch

    from capmill.stages.score import ClipScoreStageConfig
    from capmill.testing.reference import torchmetrics_clip_score

    torch.set_num_threads(2)
    images, texts = pairs()
    stage = ClipScoreStageConfig(backend={"type": "clip", "model": tiny_clip}, fields=["dsc"]).build()
    stage.setup(RunContext())
    samples = []
    for i, (image, text) in enumerate(zip(images, texts)):
        s = Sample(key=f"{i:04d}", alt_text=None, captions={"dsc": Caption(text, "dsc")})
        s.image.image = image
        samples.append(s)
    for start in range(0, N_PAIRS, 64):
        stage.process(samples[start:start + 64])
    stage.teardown()
    ours = np.array([s.scores["clipscore:dsc"] for s in samples])

    expected, model, processor = by_hand(tiny_clip, images, texts)
    assert np.abs(ours - np.array(expected)).max() < 1e-5

    metric = torchmetrics_clip_score(model, processor)
    theirs = []
    for image, text in zip(images, texts):
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        metric.reset()
        metric.update(pixels, "A photo depicts " + text)
        theirs.append(2.5 * max(float(metric.compute()) / 100, 0.0))  # torchmetrics: max(100·cos, 0)
    assert np.abs(ours - np.array(theirs)).max() < 1e-5
