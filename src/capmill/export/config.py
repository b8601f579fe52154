"""The typed config of `capmill export`: a target, its mix table and per-target options."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError

from capmill.components import Strict
from capmill.config import apply_overrides, format_validation_error
from capmill.errors import ConfigError
from capmill.export.mix import TARGET_MIX, MixConfig

Target = Literal["clip", "mllm", "diffusion", "dreamlip", "llava_video"]


class ExportConfig(Strict):
    target: Target
    # Seed of every draw (mix, sub-captions, instruction turns); draws are per sample key.
    seed: int = 0
    mix: MixConfig
    # Export only samples whose status is ok (failed or dropped ones have no usable caption).
    only_ok: bool = True
    # diffusion: one parquet per shard, or sidecar folders of IMAGE + .txt per shard.
    diffusion_format: Literal["parquet", "sidecar"] = "parquet"
    # dreamlip: sub-captions sampled per image.
    sentences: int = Field(6, ge=1)


def export_config(target: str, seed: int = 0, overrides: list[str] | None = None) -> ExportConfig:
    """The target's defaults (see `capmill.export.mix.TARGET_MIX`) with `--set` overrides applied."""
    if target not in TARGET_MIX:
        raise ConfigError(f"unknown export target {target!r}; choose one of {', '.join(TARGET_MIX)}")
    tree: dict[str, Any] = {"target": target, "seed": seed, "mix": TARGET_MIX[target].model_dump()}
    apply_overrides(tree, overrides or [])
    try:
        return ExportConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
