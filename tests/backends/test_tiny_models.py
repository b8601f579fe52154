"""The tiny models load through the real Auto* classes and generate end to end."""

import json

import pytest

from capmill.testing.tiny_models import FAMILIES


def test_every_family_is_saved_with_its_processor(tiny_models):
    assert (tiny_models / "open_clip" / "open_clip_config.json").is_file()
    assert (tiny_models / "open_clip" / "open_clip_model.safetensors").is_file()
    # whisper links the real tiny.en CTranslate2 model (not a transformers folder).
    assert (tiny_models / "whisper" / "model.bin").is_file() and (tiny_models / "whisper" / "tokenizer.json").is_file()
    # tiny_sd is a diffusers pipeline: model_index.json and one folder per component.
    assert (tiny_models / "tiny_sd" / "model_index.json").is_file()
    assert (tiny_models / "tiny_sd" / "unet" / "config.json").is_file()
    for family in (f for f in FAMILIES if f not in ("open_clip", "whisper", "tiny_sd")):
        folder = tiny_models / family
        assert (folder / "config.json").is_file(), family
        assert (folder / "model.safetensors").is_file(), family
        # DETR reads no text: its folder holds an image processor instead of a tokenizer
        processor = "preprocessor_config.json" if family == "detr" else "tokenizer_config.json"
        assert (folder / processor).is_file(), family
        config = json.loads((folder / "config.json").read_text())
        assert config.get("hidden_size", config.get("text_config", {}).get("hidden_size", 0)) <= 128, family


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3"])
def test_chat_vlm_generates_with_image_placeholders(tiny_models, family):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models / family)
    model = AutoModelForImageTextToText.from_pretrained(tiny_models / family)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the photo."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[[Image.new("RGB", (90, 60), "red")]], text=[text], return_tensors="pt")
    image_token_id = processor.image_token_id
    # The processor expanded the template's one placeholder into the image's feature tokens.
    assert int((inputs["input_ids"] == image_token_id).sum()) > 1
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4 or processor.tokenizer.eos_token_id in out[0].tolist()


def test_clip_tokenizer_is_the_real_clip_bpe(tiny_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models / "clip")
    assert len(tokenizer) == 49408
    # Ids of the real CLIP vocabulary: "a photo of a dog".
    assert tokenizer("a photo of a dog").input_ids == [49406, 320, 1125, 539, 320, 1929, 49407]


@pytest.mark.parametrize("family, phrases", [("owlv2", [["a dog", "a cat"], ["a tree"]]), ("detr", None)])
def test_tiny_detectors_detect_in_pixels_of_each_image(tiny_models, family, phrases):
    from PIL import Image

    from capmill.backends.detectors import HFDetectorConfig

    backend = HFDetectorConfig(model=str(tiny_models / family), threshold=0.0, device="cpu").build()
    backend.load()
    images = [Image.new("RGB", (90, 60), "red"), Image.new("RGB", (40, 70), "blue")]
    found = backend.detect(images, phrases)
    assert [d.error for d in found] == [None, None]
    for image, detections, wanted in zip(images, found, phrases or [None, None]):
        assert detections.items
        labels = wanted or ["person", "dog", "car"]
        for d in detections.items:
            assert d.label in labels and 0.0 <= d.score <= 1.0
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 <= x1 <= image.width and 0 <= y0 <= y1 <= image.height
    assert backend.detect(images[:1], [[]])[0].items  # no phrases: the config's own list
    backend.close()


@pytest.mark.slow
def test_cli_writes_every_family(tmp_path):
    from capmill.testing import tiny_models

    assert tiny_models.main([str(tmp_path / "m")]) == 0
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(FAMILIES)


@pytest.mark.slow
def test_every_role_has_a_tiny_model_that_plays_it(tiny_models):
    """`--models DIR` hands each stage the tiny model of its role (capmill.testing.tiny_models.ROLES)."""
    import numpy as np
    from PIL import Image
    from pydantic import TypeAdapter

    from capmill.backends import base
    from capmill.components import BackendSpec
    from capmill.sample import Waveform
    from capmill.testing.smoke import tiny_backend

    calls = {
        base.VisionLanguageModel: lambda b: b.generate([base.VLMRequest("Describe.", [Image.new("RGB", (32, 32))],
                                                                        params=base.GenerationParams(max_new_tokens=3))]),
        base.LanguageModel: lambda b: b.chat([base.ChatRequest([{"role": "user", "content": "Hi"}],
                                                               params=base.GenerationParams(max_new_tokens=3))]),
        base.AudioLanguageModel: lambda b: b.generate([base.VLMRequest("Describe.", audio=base.AudioInput(
            np.zeros(16000, np.float32), 16000, 1.0), params=base.GenerationParams(max_new_tokens=3))]),
        base.ImageTextScorer: lambda b: b.embed_texts(["a dog"]),
        base.AudioTextScorer: lambda b: b.embed_audio([Waveform(np.zeros(48000, np.float32), 48000)]),
        base.TextEmbedder: lambda b: b.embed(["a dog"]),
        base.AskingVisionLanguageModel: lambda b: b.ask([base.AskRequest(Image.new("RGB", (32, 32)), "Is it red?")]),
        base.ContrastiveVisionLanguageModel: lambda b: b.forced_logits([base.ForcedRequest(Image.new("RGB", (32, 32)),
                                                                                          "Describe.", "a dog")]),
        base.Detector: lambda b: b.detect([Image.new("RGB", (48, 32))], [["a dog"]]),
        base.TextRecognizer: lambda b: b.read([Image.new("RGB", (48, 32), "white")]),
        base.TextAnalyzer: lambda b: b.analyze(["A dog runs."]),
        base.RewardModel: lambda b: b.score(["a dog"], [Image.new("RGB", (32, 32))]),
    }
    for role, call in calls.items():
        config = TypeAdapter(BackendSpec).validate_python(tiny_backend(role, str(tiny_models)))
        backend = base.require(config.build(), role, role.__name__)
        backend.load()
        try:
            assert len(call(backend)) == 1, role.__name__
        finally:
            backend.close()
