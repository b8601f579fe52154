"""The typed config of `capmill export`: a target, its mix table and per-target options; and the
export recipes (`recipes/export/NAME.yaml`) that fix them for a published method."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from capmill.components import Strict
from capmill.config import apply_overrides, format_validation_error
from capmill.errors import ConfigError
from capmill.export.mix import TARGET_MIX, MixConfig

Target = Literal["clip", "mllm", "diffusion", "dreamlip", "llava_video", "grounding", "clap"]
# In mix.synthetic: the caption the run wrote as its training text (its `output.text_field`).
CHOSEN = "@chosen"


class ExportConfig(Strict):
    # Options added later stay out of the dump while unset: exports without them keep their hash.
    omit_when_none: ClassVar[frozenset[str]] = frozenset({"bins", "bin_score"})

    target: Target
    # Seed of every draw (mix, instruction turns); draws are per sample key.
    seed: int = 0
    mix: MixConfig
    # Export only samples whose status is ok (failed or dropped ones have no usable caption).
    only_ok: bool = True
    # diffusion: one parquet per shard, or sidecar folders of IMAGE + .txt per shard.
    diffusion_format: Literal["parquet", "sidecar"] = "parquet"
    # diffusion sidecar: name folders "N_NAME" (kohya's sd-scripts: N repeats of the folder per epoch).
    repeats: int | None = Field(None, ge=1)
    # diffusion sidecar: the folder name of each shard; must contain {shard}.
    folder: str = "{shard}"
    # Keep only samples whose alignment bin (NoC, `align_bin`) is one of these, e.g. [7] for the
    # best-aligned of 8 bins; None keeps every bin. NoC trains on all bins (conditioned on them)
    # and decodes at the top one; a plain captioner trained on the top bins alone is its filtering
    # counterpart.
    bins: list[int] | None = None
    # The score holding the bin; None: "align_bin".
    bin_score: str | None = None

    @model_validator(mode="after")
    def _folder_per_shard(self) -> ExportConfig:
        if "{shard}" not in self.folder:
            raise ValueError("folder must contain {shard}: every run shard gets its own folder")
        if self.repeats is not None and self.diffusion_format != "sidecar":
            raise ValueError("repeats names sidecar folders (kohya): set diffusion_format: sidecar")
        return self

    def folder_name(self, shard: str) -> str:
        name = self.folder.replace("{shard}", shard)
        return f"{self.repeats}_{name}" if self.repeats is not None else name


def default_mix(target: str, diffusion_format: str = "parquet") -> dict[str, Any]:
    """The target's mix table. A diffusion sidecar folder holds one text per image, which the
    trainer reads as the prompt: by default the run's chosen caption, never a silent AltText."""
    if target == "diffusion" and diffusion_format == "sidecar":
        return MixConfig(p_synthetic=1.0, synthetic=[CHOSEN]).model_dump()
    return TARGET_MIX[target].model_dump()


def export_config(target: str | None, seed: int = 0, overrides: list[str] | None = None,
                  recipe: dict[str, Any] | None = None) -> ExportConfig:
    """The target's defaults, then the export recipe's settings, then `--set` overrides."""
    recipe = dict(recipe or {})
    target = target or recipe.get("target")
    if target is None:
        raise ConfigError("export needs a target: --target clip|mllm|diffusion|dreamlip|llava_video|grounding|clap, "
                          "or an export --recipe")
    if target not in TARGET_MIX:
        raise ConfigError(f"unknown export target {target!r}; choose one of {', '.join(TARGET_MIX)}")
    if recipe.get("target", target) != target:
        raise ConfigError(f"the export recipe is for --target {recipe['target']}, not {target}")
    probe: dict[str, Any] = {**recipe}
    apply_overrides(probe, [o for o in overrides or [] if o.split("=", 1)[0].strip() == "diffusion_format"])
    tree: dict[str, Any] = {"target": target, "seed": seed,
                            "mix": default_mix(target, probe.get("diffusion_format", "parquet"))}
    tree["mix"].update(recipe.pop("mix", None) or {})
    tree.update({k: v for k, v in recipe.items() if k != "target"})
    apply_overrides(tree, overrides or [])
    try:
        return ExportConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def load_export_recipe(name: str) -> dict[str, Any]:
    """An export recipe by name (`recipes/export/NAME.yaml`) or path: the settings under its comments."""
    from capmill.recipes import find_export_recipe

    data = yaml.safe_load(find_export_recipe(name).text)
    if not isinstance(data, dict):
        raise ConfigError(f"export recipe {name!r} must hold a mapping")
    return data
