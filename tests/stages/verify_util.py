"""Helpers for the verifying stages' tests: samples with real photos, a stage run directly."""

from __future__ import annotations

from PIL import Image

from capmill.sample import Caption, ImageRef, Sample
from capmill.stages.base import RunContext


def samples(n: int, caption: str | None = None, key: str = "dsc_plus", alt: str | None = "A photo",
            size=(96, 72)) -> list[Sample]:
    from capmill.testing.shards import generated

    out = []
    for i in range(n):
        sample = Sample(key=f"s{i:03d}", image=ImageRef(image=generated(i, size)), alt_text=alt)
        if caption is not None:
            sample.captions[key] = Caption(text=caption, source=key)
        out.append(sample)
    return out


def run_stage(config, batch):
    """Build, set up and run a stage config on one batch; returns (stage, batch)."""
    stage = config.build()
    stage.setup(RunContext())
    try:
        return stage, stage.process(batch)
    finally:
        stage.teardown()


def blank(size=(96, 72)) -> Image.Image:
    return Image.new("RGB", size, "white")


def updated(config, **changes):
    """`config` with `changes`, validated like a config written by hand."""
    return type(config).model_validate({**config.model_dump(), **changes})
