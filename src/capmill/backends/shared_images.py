"""Each distinct image of a transformers call preprocessed once (`OncePerImage`), and the pieces
the backend needs to run the vision tower once per distinct image (`SharedImages`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Key under which `_vlm_inputs` hands the batch's SharedImages to `_generate`.
SHARED_IMAGES = "capmill_shared_images"


class OncePerImage:
    """The model's image processor, preprocessing each distinct image of a call once.

    The caption stage asks for several formats of one image in one batch, every request carrying
    the same image object. The processor would resize, normalise and patchify that image once per
    request; this wrapper runs it once per distinct image and assembles the batch output from the
    per-image results, which is exact wherever each output is per-image along its first axis
    (pixel values, patch grids, tile counts). Processors that pad across the batch (Idefics3 pads
    every image's tiles to the batch's largest count with zeros) get the per-image outputs padded
    with zeros too, once this has been checked equal to the processor's own batch output on the
    first batch that needs it; where it is not equal, such batches go to the processor whole, as
    do batches with several images per request. Everything else is the wrapped processor's own.

    After a call that shared images, `shared` holds the per-distinct-image outputs and which of
    them each image of the batch is, so the backend can run the vision tower once per distinct
    image too (`TransformersBackend._encode_shared_images`); otherwise it is None.
    """

    def __init__(self, inner: Any):
        self.inner = inner
        self.shared: SharedImages | None = None
        # Whether zero-padding per-image outputs reproduces this processor's batches: None until
        # the first batch whose per-image outputs differ in shape tells.
        self.pads_with_zeros: bool | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, images: Any, *args: Any, **kwargs: Any) -> Any:
        from PIL import Image as PILImage

        self.shared = None
        # Processors pass a flat list, or one list per request ("nested"); share only where each
        # request has one PIL image and some image repeats.
        nested = isinstance(images, list) and all(isinstance(x, list) for x in images)
        one_each = isinstance(images, list) and not (nested and any(len(x) != 1 for x in images))
        flat = [x[0] if nested else x for x in images] if one_each else []
        if (not flat or not all(isinstance(im, PILImage.Image) for im in flat)
                or len({id(im) for im in flat}) == len(flat)):
            return self.inner(images, *args, **kwargs)
        done: dict[int, Any] = {}
        for im in flat:
            if id(im) not in done:
                done[id(im)] = self.inner([[im]] if nested else [im], *args, **kwargs)
        parts = [done[id(im)] for im in flat]
        try:
            joined = concat_features(parts, pad=bool(self.pads_with_zeros))
        except (TypeError, ValueError, RuntimeError):  # not per-image along axis 0, or shapes differ
            if self.pads_with_zeros is not None:
                return self.inner(images, *args, **kwargs)
            whole = self.inner(images, *args, **kwargs)
            try:
                self.pads_with_zeros = _same_features(concat_features(parts, pad=True), whole)
            except (TypeError, ValueError, RuntimeError):
                self.pads_with_zeros = False
            return whole
        slot = {key: i for i, key in enumerate(done)}
        self.shared = SharedImages(list(done.values()), [slot[id(im)] for im in flat])
        return joined


@dataclass
class SharedImages:
    """A batch's distinct images: their processor outputs, and for each image of the batch (in
    order) the index of its distinct image."""

    parts: list[Any]
    index: list[int]


def concat_features(parts: list[Any], pad: bool = False) -> Any:
    """Per-image processor outputs joined along the first axis, as one call over all would give;
    with `pad`, tensors whose other axes differ are first zero-padded at the end to the largest."""
    import torch
    from transformers import BatchFeature

    first = parts[0]
    if set(first.keys()) != set().union(*(p.keys() for p in parts)):
        raise ValueError("per-image outputs differ in their keys")
    joined: dict[str, Any] = {}
    for key, value in first.items():
        values = [p[key] for p in parts]
        if isinstance(value, torch.Tensor):
            if pad and len({v.shape[1:] for v in values}) > 1:
                values = [_zero_pad(v, [max(sizes) for sizes in zip(*(w.shape[1:] for w in values))]) for v in values]
            joined[key] = torch.cat(values, dim=0)
        elif isinstance(value, list):
            joined[key] = [x for v in values for x in v]
        else:
            raise TypeError(f"cannot join {type(value).__name__} outputs of {key!r}")
    return BatchFeature(joined, tensor_type=None)


def _zero_pad(tensor: Any, sizes: list[int]) -> Any:
    """`tensor` zero-padded at the end of every axis but the first to `sizes`."""
    import torch.nn.functional as F

    widths = [w for have, want in zip(reversed(tensor.shape[1:]), reversed(sizes)) for w in (0, want - have)]
    return F.pad(tensor, widths)


def _same_features(a: Any, b: Any) -> bool:
    import torch

    return set(a.keys()) == set(b.keys()) and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)
