"""Image–text matching through BLIP's ITM head (transformers `BlipForImageTextRetrieval`).

    backend: {type: blip_itm, model: Salesforce/blip-itm-base-coco}

BLIP's ITM head reads the text through a cross-attending text encoder over the image's patch
embeddings and classifies the pair as matched or not; the match probability is the softmax of
its two logits, index 1. This is the score TL;DR ("Too Large; Data Reduction for
Vision-Language Pre-Training", ICCV 2023) ranks pairs by for its "better half"; its reference
(showlab/datacentric.vlp `vq_compress_model/models/blip_itm.py`) reads texts of at most 35
tokens, the default of `max_text_tokens`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from capmill.backends.availability import load_pretrained
from capmill.backends.common import import_torch_stack, pick_device
from capmill.components import BackendConfig
from capmill.errors import SetupError
from capmill.media.image import to_rgb

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


class BlipItmConfig(BackendConfig):
    type: Literal["blip_itm"] = "blip_itm"
    # Hub id or local folder of a BLIP image–text retrieval model (ITM head).
    model: str = "Salesforce/blip-itm-base-coco"
    revision: str | None = None
    device: str = "auto"
    batch_size: int = Field(32, ge=1)
    # Text tokens read per pair (BLIP's ITM reads 35).
    max_text_tokens: int = Field(35, ge=4)

    def build(self) -> BlipItmMatcher:
        return BlipItmMatcher(self)

    def model_ids(self) -> list[str]:
        return [self.model]


class BlipItmMatcher:
    """ImageTextMatcher: P(match) of each (image, text) pair from BLIP's ITM head."""

    def __init__(self, config: BlipItmConfig):
        self.config = config
        self.model_id = config.model
        self.model: Any = None

    def load(self) -> None:
        if self.model is not None:
            return
        import_torch_stack()
        from transformers import AutoProcessor, BlipForImageTextRetrieval

        cfg = self.config
        self.processor, model = load_pretrained(
            cfg.model, cfg.revision, "ITM model",
            lambda path: (AutoProcessor.from_pretrained(path), BlipForImageTextRetrieval.from_pretrained(path)),
            "it must be a BLIP image-text retrieval model (e.g. Salesforce/blip-itm-base-coco)")
        self.device = pick_device(cfg.device)
        self.model = model.to(self.device).eval()

    def close(self) -> None:
        self.model = None

    def match(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        import numpy as np
        import torch

        if self.model is None:
            raise SetupError(f"ITM model {self.model_id!r} used before load()")
        if len(images) != len(texts):
            raise ValueError(f"match needs one text per image, got {len(images)} images and {len(texts)} texts")
        out = []
        size = self.config.batch_size
        with torch.inference_mode():
            for i in range(0, len(images), size):
                out.append(self._probabilities([to_rgb(im) for im in images[i:i + size]], texts[i:i + size]))
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def _probabilities(self, images: list[Image.Image], texts: list[str]) -> Any:
        import torch

        inputs = self.processor(images=images, text=texts, padding=True, truncation=True,
                                max_length=self.config.max_text_tokens, return_tensors="pt").to(self.device)
        # The ITM head of BlipForImageTextRetrieval.forward, with the image attention mask made on
        # the model's device (forward builds it on the CPU).
        image_embeds = self.model.vision_model(pixel_values=inputs["pixel_values"]).last_hidden_state
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text = self.model.text_encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                       encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask)
        logits = self.model.itm_head(text.last_hidden_state[:, 0, :])
        return torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy()
