"""Reward models: a learned quality score per text, or per image and text.

    backend: {type: reward, model: Skywork/Skywork-Reward-V2-Qwen3-0.6B, prompt: "Describe the image."}
    backend: {type: reward, model: ORG/an-image-text-reward-model}      # a processor with images

A reward model here is any transformers `AutoModelForSequenceClassification` checkpoint: the
score is its single logit (`num_labels: 1`, the usual reward head) or, for a classifier, the
softmax probability of `label` (default the last, "good"). Compress & Align ("Compress and
Align: Curating Image-Text Data with Human Knowledge", 2025; no public code) trains such a model
on human ratings of image-text pairs and keeps the best-rated ~12% of the data; capmill runs any
checkpoint of that kind through the `RewardModel` protocol (`reward_score`, `rank`).

What the model reads: the text alone, or with `prompt` set, a chat exchange in which the user
turn is the prompt (with the image in front of it when the model takes images and the request
has one) and the assistant turn is the text; a tokenizer without a chat template gets the pair
(prompt, text). Image-text models are those whose folder holds a processor with an image
processor (Gemma 3 and other vision-language sequence classifiers); they score a text without
an image when none is given. Texts are untrusted: the model's special tokens in them are
neutralised before the template is applied.

Scores come back as float32, one per text, in order; a chunk that fails is retried text by text
and a text the model cannot read scores NaN (which `filter` and `rank` treat as unmeasured).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from capmill.backends.availability import load_pretrained
from capmill.backends.common import import_torch_stack, model_special_tokens, neutralise_for, pick_device, pick_dtype
from capmill.components import BackendConfig
from capmill.errors import SetupError
from capmill.media.image import to_rgb

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

log = logging.getLogger(__name__)


class RewardModelConfig(BackendConfig):
    type: Literal["reward"] = "reward"
    # Hub id or local folder of a sequence-classification (reward) model.
    model: str
    revision: str | None = None
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    trust_remote_code: bool = False
    batch_size: int = Field(16, ge=1)
    # The user turn the text answers (None: the text alone). Reward models trained on chat
    # exchanges score an answer to a question; a caption answers "describe the image".
    prompt: str | None = None
    # For a classifier head (more than one label): the label whose probability is the reward.
    label: int = -1
    # Tokens read per text (prompt and template included); longer inputs are cut at the end.
    max_length: int = Field(512, ge=8)

    def build(self) -> RewardModelBackend:
        return RewardModelBackend(self)

    def model_ids(self) -> list[str]:
        return [self.model]


class RewardModelBackend:
    """RewardModel through transformers' AutoModelForSequenceClassification."""

    def __init__(self, config: RewardModelConfig):
        self.config = config
        self.model_id = config.model
        self.model: Any = None
        self.processor: Any = None
        self.tokenizer: Any = None
        self.takes_images = False

    def load(self) -> None:
        if self.model is not None:
            return
        import_torch_stack()
        from transformers import AutoModelForSequenceClassification, AutoProcessor, AutoTokenizer

        cfg = self.config
        shared = {"trust_remote_code": cfg.trust_remote_code}

        def load(path: str):
            try:
                processor = AutoProcessor.from_pretrained(path, **shared)
            except (OSError, ValueError, TypeError):
                processor = None  # a text model: its tokenizer is all there is
            if processor is None or getattr(processor, "image_processor", None) is None:
                processor = None
                tokenizer = AutoTokenizer.from_pretrained(path, **shared)
            else:
                tokenizer = processor.tokenizer
            return processor, tokenizer, AutoModelForSequenceClassification.from_pretrained(path, **shared)

        self.processor, self.tokenizer, model = load_pretrained(
            cfg.model, cfg.revision, "reward model", load,
            "it must be a sequence-classification checkpoint (AutoModelForSequenceClassification)")
        self.takes_images = self.processor is not None
        labels = model.config.num_labels
        if not -labels <= cfg.label < labels:
            raise SetupError(f"reward model {cfg.model!r} has {labels} label(s); label {cfg.label} is not one of them "
                             f"(a single-logit reward head takes the default, -1)")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            # Decoder reward heads read the last non-padding token: they must know the pad id.
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        self.model = model.to(self.device, dtype=self.dtype).eval()
        self.special_tokens = model_special_tokens(self.tokenizer)
        owner = self.processor if getattr(self.processor, "chat_template", None) else self.tokenizer
        self.template_owner = owner if getattr(owner, "chat_template", None) else None

    def close(self) -> None:
        self.model = self.processor = self.tokenizer = None

    def _text(self, text: str, with_image: bool) -> str | tuple[str, str]:
        """What the model reads for one text: the text, a rendered chat exchange, or a pair."""
        text = neutralise_for(text, self.special_tokens)
        prompt = self.config.prompt
        if prompt is None and not with_image:
            return text
        if self.template_owner is None:
            return (prompt or "", text)
        user: list[dict[str, str]] = [{"type": "image"}] if with_image else []
        user.append({"type": "text", "text": neutralise_for(prompt or "", self.special_tokens)})
        if self.processor is None:  # a text tokenizer's template takes string contents
            messages = [{"role": "user", "content": user[-1]["text"]}, {"role": "assistant", "content": text}]
        else:
            messages = [{"role": "user", "content": user},
                        {"role": "assistant", "content": [{"type": "text", "text": text}]}]
        return self.template_owner.apply_chat_template(messages, tokenize=False)

    def score(self, texts: list[str], images: list[Image.Image | None] | None = None) -> np.ndarray:
        import numpy as np

        if self.model is None:
            raise SetupError(f"reward model {self.model_id!r} used before load()")
        images = list(images) if images is not None else [None] * len(texts)
        if len(images) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(images)} images")
        if not self.takes_images:
            images = [None] * len(texts)
        out = np.full(len(texts), np.nan, dtype=np.float32)
        # Texts with and without an image go in separate chunks: a processor call takes either.
        for group in ([i for i, im in enumerate(images) if im is None], [i for i, im in enumerate(images) if im is not None]):
            size = self.config.batch_size
            for start in range(0, len(group), size):
                self._chunk(group[start:start + size], texts, images, out)
        return out

    def _chunk(self, indices: list[int], texts: list[str], images: list, out) -> None:
        try:
            out[indices] = self._forward([texts[i] for i in indices], [images[i] for i in indices])
        except (ValueError, RuntimeError, TypeError, IndexError) as e:
            if len(indices) > 1:
                for i in indices:
                    self._chunk([i], texts, images, out)
            else:
                log.warning("%s: text %d could not be scored: %s", self.model_id, indices[0], e)

    def _forward(self, texts: list[str], images: list) -> list[float]:
        import torch

        with_image = images[0] is not None
        inputs = [self._text(t, with_image) for t in texts]
        templated = self.template_owner is not None and (self.config.prompt is not None or with_image)
        # A rendered chat template already holds BOS: the tokenizer must not add another. Image
        # inputs are not cut (a cut would split the image's tokens from their placeholder).
        common: dict[str, Any] = {"return_tensors": "pt", "padding": True, "add_special_tokens": not templated}
        if not with_image:
            common.update(truncation=True, max_length=self.config.max_length)
        if isinstance(inputs[0], tuple):
            batch = self.tokenizer([a for a, _ in inputs], [b for _, b in inputs], **common)
        elif with_image:
            batch = self.processor(text=inputs, images=[[to_rgb(im)] for im in images], **common)
        else:
            batch = self.tokenizer(inputs, **common)
        batch = {k: (v.to(self.device, dtype=self.dtype) if v.is_floating_point() else v.to(self.device))
                 for k, v in batch.items() if isinstance(v, torch.Tensor)}
        with torch.inference_mode():
            logits = self.model(**batch).logits.float()
        if logits.shape[-1] == 1:
            return logits[:, 0].cpu().tolist()
        return torch.softmax(logits, dim=-1)[:, self.config.label].cpu().tolist()
