"""Classifier-free guidance for captioners, as a transformers logits processor.

"Classifier-free guidance makes image captioning models more descriptive" (Kornblith et al.,
ICCV 2023; no public code): at every step the next-token distribution is taken from

    log p̃ = log p(y | no image) + γ · (log p(y | image) − log p(y | no image))

γ = 1 is ordinary decoding; γ > 1 pushes towards tokens the image makes likelier (the paper's
γ = 2 raised CLIPScore and caption→image recall and lowered CIDEr). Because log-softmax and raw
logits differ by one constant per row, this is `uncond + γ·(cond − uncond)` on the logits up to
that constant, and the resulting distribution is the same.

The unconditional branch is a second pass of the same model over the same prompt without its
image (`no_image`: the chat turn rendered with no image part) or with a blank mid-grey image of
the same size (`blank_image`), run step by step beside the conditional one with its own cache,
fed the tokens the conditional branch chose. The paper trains its captioner with image dropout so
that the unconditional branch is a real text prior; an off-the-shelf VLM was not trained that
way, so its image-free distribution is only an approximation of it. Treat γ as a knob to tune
on a sample, not as the paper's setting.

The branch mirrors what transformers' own decoding loop does for the conditional pass: inputs
expanded for `num_return_sequences` with the model's `_expand_inputs_for_generation`, position
ids from the attention mask with the model's own `_prepare_position_ids_for_generation` (left
padding is then exact), and each step prepared with `prepare_inputs_for_generation`. Beam search
is not guided (beams reorder rows the branch's cache does not follow); `GenerationParams` refuses
the combination.
"""

from __future__ import annotations

import inspect
from typing import Any

NO_IMAGE, BLANK_IMAGE = "no_image", "blank_image"


def guided(cond: Any, uncond: Any, scale: float) -> Any:
    """`uncond + scale · (cond − uncond)` of the log-probabilities of two logit rows."""
    import torch

    cond_lp = torch.log_softmax(cond.float(), dim=-1)
    uncond_lp = torch.log_softmax(uncond.float(), dim=-1)
    return uncond_lp + scale * (cond_lp - uncond_lp)


def blank_like(image: Any) -> Any:
    """A mid-grey image of `image`'s size: the null image of the unconditional branch."""
    from PIL import Image

    return Image.new("RGB", image.size, (128, 128, 128))


def _logits_processor_base() -> type:
    from transformers import LogitsProcessor

    return LogitsProcessor


class ImageFreeGuidance:
    """A transformers LogitsProcessor running the unconditional branch (see the module docstring).

    `uncond` holds the processor outputs of the unconditional prompts, one row per request of the
    generate call (before expansion for `num_return_sequences`). Scores come back as guided
    log-probabilities; processors after this one (temperature, top-p) see them as logits, which
    is what they are up to a constant per row. Each instance serves one `generate` call.
    """

    def __init__(self, model: Any, scale: float, uncond: dict[str, Any]):
        self.model = model
        self.scale = scale
        self.kwargs = {k: v for k, v in uncond.items() if k != "input_ids"}
        self.ids = uncond["input_ids"]
        self.first = True
        # Unconditional logits of the last step, kept for inspection (tests compare them with a
        # plain forward pass over the same tokens).
        self.last_uncond: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        uncond = self._uncond_logits(input_ids)
        self.last_uncond = uncond
        return guided(scores, uncond, self.scale).to(scores.dtype)

    def _uncond_logits(self, input_ids: Any) -> Any:
        import torch

        model = self.model
        with torch.inference_mode():
            if self.first:
                self.first = False
                kwargs = {"use_cache": True, **self.kwargs}
                rows = input_ids.shape[0]
                if rows != self.ids.shape[0]:
                    if rows % self.ids.shape[0]:
                        raise ValueError(f"guidance: {rows} rows to guide for {self.ids.shape[0]} prompts")
                    self.ids, kwargs = model._expand_inputs_for_generation(
                        expand_size=rows // self.ids.shape[0], input_ids=self.ids, **kwargs)
                if "position_ids" in inspect.signature(model.forward).parameters:
                    kwargs["position_ids"] = model._prepare_position_ids_for_generation(self.ids, kwargs)
                inputs = model.prepare_inputs_for_generation(self.ids, is_first_iteration=True, **kwargs)
            else:
                self.ids = torch.cat([self.ids, input_ids[:, -1:]], dim=-1)
                kwargs = self.kwargs
                inputs = model.prepare_inputs_for_generation(self.ids, next_sequence_length=1, **kwargs)
            out = model(**inputs, return_dict=True)
            self.kwargs = model._update_model_kwargs_for_generation(out, kwargs, num_new_tokens=1)
        return out.logits[:, -1, :]


def guidance_processor(model: Any, scale: float, uncond: dict[str, Any]) -> Any:
    """An `ImageFreeGuidance` that transformers accepts as a LogitsProcessor."""
    cls = type("ImageFreeGuidanceProcessor", (ImageFreeGuidance, _logits_processor_base()), {})
    return cls(model, scale, uncond)


def sampling_processors(temperature: float, top_p: float) -> list[Any]:
    """Temperature and top-p as processors that run after guidance (transformers would otherwise
    apply them before a custom processor, i.e. to the conditional logits alone)."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    out: list[Any] = []
    if temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(top_p))
    return out
