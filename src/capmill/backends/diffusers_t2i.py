"""Text-to-image through diffusers (`type: diffusers`): the TextToImage backend of
CLIP-Image-Score in `capmill eval`.

    t2i: {type: diffusers, model: stable-diffusion-v1-5/stable-diffusion-v1-5, device: cuda}
    t2i: {type: diffusers, model: stabilityai/sdxl-turbo, steps: 1, guidance_scale: 0.0}

Any checkpoint `DiffusionPipeline.from_pretrained` reads as a text-to-image pipeline works. Each
request has its own seeded generator, so an image depends on its prompt and seed, not on the
batch it was drawn in. Prompts longer than the text encoder's window are cut by the pipeline's
tokenizer (77 CLIP tokens for Stable Diffusion): a dense caption is judged by its beginning.
`pip install 'capmill[t2i]'` installs diffusers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from capmill.backends.base import GeneratedImage, ImageRequest
from capmill.components import BackendConfig
from capmill.errors import SetupError


class DiffusersConfig(BackendConfig):
    type: Literal["diffusers"] = "diffusers"
    # Hub id or local folder of a diffusers text-to-image pipeline (capmill's default, not the paper's).
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    revision: str | None = None
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    batch_size: int = Field(4, ge=1)
    steps: int = Field(30, ge=1)
    guidance_scale: float = Field(7.5, ge=0)
    # Output side in pixels (None: the pipeline's default).
    size: int | None = Field(None, ge=8)

    def build(self) -> DiffusersTextToImage:
        return DiffusersTextToImage(self)

    def model_ids(self) -> list[str]:
        return [self.model]


class DiffusersTextToImage:
    """Implements TextToImage with a diffusers pipeline."""

    def __init__(self, config: DiffusersConfig):
        self.config = config
        self.model_id = config.model
        self.pipe: Any = None

    def load(self) -> None:
        if self.pipe is not None:
            return
        from capmill.backends.availability import load_pretrained
        from capmill.backends.common import import_torch_stack, pick_device, pick_dtype

        import_torch_stack()
        try:
            from diffusers import DiffusionPipeline
        except ImportError:
            raise SetupError("the diffusers backend needs diffusers: `pip install 'capmill[t2i]'`") from None
        self.device = pick_device(self.config.device)
        dtype = pick_dtype(self.config.dtype, self.device)
        pipe = load_pretrained(self.config.model, self.config.revision, "text-to-image model",
                               lambda path: DiffusionPipeline.from_pretrained(path, dtype=dtype))
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)

    def close(self) -> None:
        self.pipe = None

    def generate_images(self, requests: list[ImageRequest]) -> list[GeneratedImage]:
        import torch

        if self.pipe is None:
            raise SetupError(f"text-to-image model {self.model_id!r} used before load()")
        cfg = self.config
        out: list[GeneratedImage] = []
        size = {"height": cfg.size, "width": cfg.size} if cfg.size else {}
        for start in range(0, len(requests), cfg.batch_size):
            batch = requests[start:start + cfg.batch_size]
            generators = [torch.Generator(device="cpu").manual_seed(r.seed) for r in batch]
            try:
                with torch.inference_mode():
                    images = self.pipe(prompt=[r.prompt for r in batch], num_inference_steps=cfg.steps,
                                       guidance_scale=cfg.guidance_scale, generator=generators, **size).images
            except (RuntimeError, ValueError) as e:  # out of memory, a prompt the pipeline refuses
                out.extend(GeneratedImage(image=None, error=f"{type(e).__name__}: {e}") for _ in batch)
                continue
            out.extend(GeneratedImage(image=im, meta={"steps": cfg.steps}) for im in images)
        return out
