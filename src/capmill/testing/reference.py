"""Reference implementations that capmill's own figures are checked and benchmarked against."""

from __future__ import annotations

from typing import Any


def torchmetrics_clip_score(model: Any, processor: Any) -> Any:
    """torchmetrics' `CLIPScore` on an already loaded transformers CLIP and its processor.

    torchmetrics calls `get_image_features` / `get_text_features` and expects tensors; transformers
    5 returns output objects whose `pooler_output` is the projected embedding, so the model is
    wrapped to return that.
    """
    import torch
    from torchmetrics.multimodal.clip_score import CLIPScore

    class TensorFeatures(torch.nn.Module):
        def __init__(self, inner: Any):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def get_image_features(self, *args: Any, **kwargs: Any) -> Any:
            return self.inner.get_image_features(*args, **kwargs).pooler_output

        def get_text_features(self, *args: Any, **kwargs: Any) -> Any:
            return self.inner.get_text_features(*args, **kwargs).pooler_output

    wrapped = TensorFeatures(model)
    return CLIPScore(model_name_or_path=lambda: (wrapped, processor))
