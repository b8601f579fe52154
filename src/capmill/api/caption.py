"""`capmill.caption(images, formats=..., backend=...)`: captions for images in memory.

A one-stage pipeline (the `caption` stage, with the run's decode hygiene) applied with
`Pipeline.process`: no input files, no output directory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from capmill.sample import Sample


class Captions(dict):
    """format → caption text for one image. `status` and `error` say whether it worked
    (`ok`); `sample` is the full record (model, prompt id, length meta of each caption)."""

    __slots__ = ("sample",)

    def __init__(self, sample: Sample):
        super().__init__({name: c.text for name, c in sample.captions.items()})
        self.sample = sample

    @property
    def key(self) -> str:
        return self.sample.key

    @property
    def status(self) -> str:
        return self.sample.status

    @property
    def error(self) -> str | None:
        return self.sample.error

    @property
    def ok(self) -> bool:
        return self.sample.ok

    def __repr__(self) -> str:
        if self.ok:
            return f"Captions({dict.__repr__(self)})"
        return f"Captions(status={self.status!r}, error={self.error!r})"


def caption(images: Any, formats: Sequence[str] = ("ssc", "dsc"), backend: Mapping[str, Any] | Any = None, *,
            alt_texts: Sequence[str | None] | None = None, image: Mapping[str, Any] | None = None,
            batch_size: int = 16, **options: Any) -> list[Captions] | dict[str, Captions]:
    """Caption `images` (PIL images, paths or encoded bytes; one, a list, or a dict key → image)
    in every format, with `backend` (a mapping such as `{"type": "transformers", "model": ID}`).

    Returns one `Captions` (format → text) per image, in order, or a dict when given a dict.
    Extra keyword arguments are caption-stage settings (`n`, `params`, `prompt_dirs`,
    `store_as`, `retries`); `image` sets the decode hygiene (`max_side`, `max_pixels`, ...);
    `alt_texts` gives each image its AltText for formats that use it. The model loads once per
    call: to caption many batches, keep a `Pipeline` and call its `process`.
    """
    from capmill.api.pipeline import Pipeline

    if backend is None:
        from capmill.errors import ConfigError

        raise ConfigError("caption() needs a backend, e.g. backend={'type': 'transformers', "
                          "'model': 'HuggingFaceTB/SmolVLM-256M-Instruct'} (see the README's Backends section)")
    if isinstance(formats, str):
        formats = [formats]
    keyed = isinstance(images, Mapping)
    if keyed:
        keys, values = [str(k) for k in images], list(images.values())
    else:
        values = list(images) if _is_many(images) else [images]
        keys = [str(i) for i in range(len(values))]
    if alt_texts is not None and len(alt_texts) != len(values):
        raise ValueError(f"alt_texts has {len(alt_texts)} entries for {len(values)} images")
    from capmill.api.pipeline import as_sample

    samples = []
    for i, (key, value) in enumerate(zip(keys, values, strict=True)):
        sample = as_sample(value, key)
        if alt_texts is not None:
            sample.alt_text = alt_texts[i]
        samples.append(sample)
    stage = {"type": "caption", "backend": backend, "formats": list(formats), **options}
    config: dict[str, Any] = {"stages": [stage]}
    if image is not None:
        config["image"] = dict(image)
    with Pipeline.from_config(config) as pipeline:
        done = pipeline.process(samples, batch_size=batch_size)
    results = [Captions(s) for s in done]
    return dict(zip(keys, results, strict=True)) if keyed else results


def _is_many(images: Any) -> bool:
    """A list, tuple or other iterable of images, but not one image, path or bytes."""
    if isinstance(images, (str, bytes, bytearray, memoryview)) or hasattr(images, "getexif"):
        return False
    import os

    return not isinstance(images, os.PathLike) and isinstance(images, Iterable)
