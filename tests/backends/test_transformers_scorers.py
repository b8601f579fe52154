"""CLIP, SigLIP and open_clip scorers on tiny models, and the real all-MiniLM-L6-v2 embedder."""

import numpy as np
import pytest
from PIL import Image

from capmill.backends.base import ImageTextScorer, TextEmbedder
from capmill.backends.scorers import ClipScorerConfig, OpenClipScorerConfig, SentenceTransformersConfig

TEXTS = ["a dog on grass", "a red bus in the city street at night", "two", "a photo " * 40, "the sky"]


def _images():
    return [Image.new("RGB" if i % 2 else "L", (50 + 9 * i, 40), (i * 50) % 256 if i % 2 == 0 else (i * 50, 20, 90))
            for i in range(5)]


@pytest.mark.parametrize("make", [
    lambda m: ClipScorerConfig(model=str(m / "clip"), batch_size=2),
    lambda m: ClipScorerConfig(model=str(m / "siglip"), batch_size=2),
    lambda m: OpenClipScorerConfig(model=str(m / "open_clip"), batch_size=2),
], ids=["clip", "siglip", "open_clip"])
def test_scorer_normalised_and_batched_equals_unbatched(tiny_models, make):
    scorer = make(tiny_models).build()
    assert isinstance(scorer, ImageTextScorer)
    scorer.load()
    images, texts = scorer.embed_images(_images()), scorer.embed_texts(TEXTS)
    assert images.shape == texts.shape == (5, 32) and images.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([scorer.embed_texts([t]) for t in TEXTS])
    np.testing.assert_allclose(texts, one_by_one, atol=1e-5)
    np.testing.assert_allclose(images, np.concatenate([scorer.embed_images([im]) for im in _images()]), atol=1e-5)
    assert not np.allclose(texts[0], texts[1])  # different texts, different embeddings
    assert scorer.embed_texts([]).shape == (0, 32)


def test_open_clip_unknown_architecture_is_a_setup_error():
    from capmill.errors import SetupError

    with pytest.raises(SetupError, match="open_clip"):
        OpenClipScorerConfig(model="No-Such-Arch").build().load()


def test_minilm_embedder_offline():
    embedder = SentenceTransformersConfig().build()
    assert isinstance(embedder, TextEmbedder)
    assert "minilm" in embedder.model_id.lower()
    embedder.load()
    vectors = embedder.embed(["a dog running on the grass", "a puppy runs across a lawn", "quarterly tax report"])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    # The real model knows that the first two say the same thing.
    assert sims[0, 1] > 0.5 > sims[0, 2]


def test_scorer_composites_transparency_over_white_like_the_pipeline(tiny_models):
    from PIL import Image

    from capmill.backends.scorers import ClipScorerConfig

    scorer = ClipScorerConfig(model=str(tiny_models / "clip"), device="cpu").build()
    scorer.load()
    clear = Image.new("RGBA", (64, 48), (0, 0, 0, 0))  # fully transparent: white once composited
    white = Image.new("RGB", (64, 48), (255, 255, 255))
    black = Image.new("RGB", (64, 48), (0, 0, 0))
    a, w, b = scorer.embed_images([clear, white, black])
    assert abs(float(a @ w) - 1.0) < 1e-6 and float(a @ b) < 1.0 - 1e-4
