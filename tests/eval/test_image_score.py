"""CLIP-Image-Score: the cosine between the scorer's embeddings of each original image and of the
image a text-to-image model draws from its caption; and the tiny diffusers pipeline with the tiny
CLIP through `capmill eval`."""

import json

import numpy as np
import pytest
from PIL import Image

from capmill.backends.base import GeneratedImage
from capmill.eval import EvalConfig
from capmill.eval.config import EvalResult
from capmill.eval.images import image_score


class PixelScorer:
    """Test double of an ImageTextScorer: an image's embedding is its mean colour."""

    model_id = "pixels"

    def embed_images(self, images):
        return np.stack([np.asarray(im.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0) + 1e-3 for im in images])


class Painter:
    """Test double of a TextToImage backend: paints the colour the caption names; fails on "fail"."""

    model_id = "painter"
    COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}

    def __init__(self):
        self.seeds = []

    def generate_images(self, requests):
        out = []
        for r in requests:
            self.seeds.append(r.seed)
            if "fail" in r.prompt:
                out.append(GeneratedImage(image=None, error="refused"))
            else:
                colour = next((c for n, c in self.COLOURS.items() if n in r.prompt), (0, 0, 0))
                out.append(GeneratedImage(image=Image.new("RGB", (8, 8), colour)))
        return out


def test_image_score_compares_drawn_and_original_images():
    scorer = PixelScorer()
    originals = scorer.embed_images([Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]])
    config = EvalConfig(fields=["f"], seed=7)
    result = EvalResult(metrics={"f": {}})
    painter = Painter()
    image_score("f", ["a", "b", "c"], ["a red ball", "a blue ball", "fail"], originals, scorer, painter, config, result)
    assert result.details["a"]["f"]["clip_image_score"] == pytest.approx(1, abs=1e-3)  # drew the same colour
    assert result.details["b"]["f"]["clip_image_score"] == pytest.approx(0, abs=1e-3)  # green drawn blue
    assert result.metrics["f"]["CLIP-Image-Score"] == pytest.approx(0.5, abs=1e-3)  # the failed one is left out
    assert painter.seeds == [7, 7, 7] and "c" not in result.details
    assert any("failed on 1 captions" in n for n in result.notes)


@pytest.mark.slow
def test_tiny_diffusers_and_clip_through_capmill_eval(tiny_models, tmp_path):
    pytest.importorskip("diffusers")
    from capmill.cli.main import main as cli

    rows = []
    for i in range(3):
        Image.new("RGB", (32, 32), (80 * i, 40, 200 - 60 * i)).save(tmp_path / f"{i}.png")
        rows.append({"key": f"k{i}", "image_path": f"{i}.png", "dsc": f"a photo of a {['red', 'green', 'blue'][i]} dog"})
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc = cli(["eval", str(tmp_path / "c.jsonl"), "--fields", "dsc", "--scorer", f"{{type: clip, model: {tiny_models / 'clip'}}}",
              "--t2i", f"{{type: diffusers, model: {tiny_models / 'tiny_sd'}, steps: 2, device: cpu}}",
              "--skip", "text,retrieval,coco", "--json", str(tmp_path / "e.json")])
    assert rc == 0
    value = json.loads((tmp_path / "e.json").read_text())["dsc"]["CLIP-Image-Score"]
    assert value is not None and -1 <= value <= 1
