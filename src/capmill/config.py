"""The run config: one reader, a list of stages, one output, an executor.

YAML validated by pydantic with unknown keys rejected; sections are discriminated by `type`.
Stages and backends are resolved through entry points (see `capmill.registry`), readers,
writers and executors are the closed sets below.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from capmill.commit.policy import ReliabilityConfig
from capmill.components import StageSpec, Strict
from capmill.errors import ConfigError
from capmill.executors.local import LocalExecutorConfig
from capmill.executors.ray import RayExecutorConfig
from capmill.media.audio import AudioConfig
from capmill.media.image import ImageConfig
from capmill.media.video import VideoConfig
from capmill.readers import FolderInput, HfInput, JsonlInput, ParquetInput, RunOutputInput, WebDatasetInput
from capmill.suggest import did_you_mean
from capmill.tracking.config import TrackingSpec
from capmill.writers.output import OutputConfig

InputSpec = Annotated[WebDatasetInput | ParquetInput | FolderInput | JsonlInput | RunOutputInput | HfInput,
                      Field(discriminator="type")]
ExecutorSpec = Annotated[LocalExecutorConfig | RayExecutorConfig, Field(discriminator="type")]


class RunConfig(Strict):
    input: InputSpec
    output: OutputConfig
    executor: ExecutorSpec = Field(default_factory=LocalExecutorConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    # How videos are decoded: hygiene limits and which frames to sample.
    video: VideoConfig = Field(default_factory=VideoConfig)
    # How audio is decoded: hygiene limits, the rate and mono mixdown stages receive.
    audio: AudioConfig = Field(default_factory=AudioConfig)
    stages: list[StageSpec] = Field(default_factory=list)
    # Seed for everything random in the run (sampling backends, bags, mixes).
    seed: int = 0
    # An experiment tracker for the run's figures (wandb, tensorboard, mlflow); see capmill.tracking.
    tracking: TrackingSpec | None = None
    # Transient-failure budget, circuit breaker, degenerate-result bounds, lock timing.
    reliability: ReliabilityConfig = Field(default_factory=ReliabilityConfig)

    @field_validator("executor", mode="before")
    @classmethod
    def _local_by_default(cls, value: Any) -> Any:
        # `executor: {batch_size: 32}` (or executor={"batch_size": 32} from Python) means the
        # default executor with that setting.
        if isinstance(value, dict) and "type" not in value:
            return {"type": "local", **value}
        return value

    @model_validator(mode="after")
    def _distinct_stage_names(self) -> RunConfig:
        """Named stages must differ; an unnamed stage repeating a type is shown as `TYPE_2`,
        `TYPE_3`, … so each keeps its own timings and drop reasons."""
        taken: dict[str, int] = {}
        for i, stage in enumerate(self.stages):
            if stage.name is not None:
                if stage.name in taken:
                    raise ValueError(f"stages {taken[stage.name]} and {i} are both named {stage.name!r}; "
                                     f"give each stage its own `name:`")
                taken[stage.name] = i
        for i, stage in enumerate(self.stages):
            if stage.name is not None:
                continue
            label, n = stage.type, 1
            while label in taken:
                n += 1
                label = f"{stage.type}_{n}"
            stage._position_name = label if n > 1 else None
            taken[label] = i
        return self

    @model_validator(mode="after")
    def _attach_video(self) -> RunConfig:
        # Executors hand the decode step `run.image` only; it carries the video and audio settings along.
        self.image.with_video(self.video).with_audio(self.audio)
        return self

    def hashed_content(self) -> dict[str, Any]:
        """What decides the output. Executor, tracking and reliability settings are left out on
        purpose: a run can be resumed with another batch size, more workers, on Ray, logging
        elsewhere or with another failure budget, and give the same records."""
        content = self.model_dump(mode="json")
        content.pop("executor", None)
        content.pop("tracking", None)
        content.pop("reliability", None)
        # Configs written before the audio section keep their hash (and resume) while it is default.
        if self.audio == AudioConfig():
            content.pop("audio", None)
        # Outputs made before --limit left the hash carry `"limit": null` in theirs; kept, so
        # that they resume.
        content["limit"] = None
        return content


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """`stages.0.backend.model=x`: walk dicts by key and lists by index, creating dicts."""
    parts = dotted.split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            try:
                index = int(part)
                node[index]
            except (ValueError, IndexError):
                raise ConfigError(f"--set {dotted}: {part!r} is not an index of a list of {len(node)}") from None
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {dotted}: {'.'.join(parts[:i])} is not a mapping or list")


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        dotted, raw = item.split("=", 1)
        set_path(tree, dotted.strip(), yaml.safe_load(raw) if raw else "")
    return tree


_QUOTED = re.compile(r"'([^']*)'")


def _message(e: dict[str, Any]) -> str:
    """pydantic's message, with "did you mean" for a mistyped type or choice, and without the
    "Value error," prefix on our own validators' messages."""
    kind, ctx = e["type"], e.get("ctx") or {}
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind == "union_tag_invalid":
        return e["msg"] + "." + did_you_mean(str(ctx.get("tag")), _QUOTED.findall(str(ctx.get("expected_tags", ""))))
    if kind == "literal_error" and isinstance(e.get("input"), str):
        return e["msg"] + "." + did_you_mean(e["input"], _QUOTED.findall(str(ctx.get("expected", ""))))
    return e["msg"]


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {where}: {_message(e)}")
    return "invalid config:\n" + "\n".join(lines)


def parse_config(tree: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            tree = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return tree


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    return parse_config(apply_overrides(load_yaml(path), overrides or []))
