"""Base classes for the typed config of every pluggable component.

Each component (stage, backend) has one pydantic config class with unknown fields rejected.
The config travels (to threads, to Ray workers); `build()` turns it into the live object, which
must not load models until its `setup`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SerializeAsAny

from capmill import registry

if TYPE_CHECKING:
    from capmill.stages.base import Stage


class Strict(BaseModel):
    """A config section: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Resources(Strict):
    """What one instance of a stage needs; the Ray executor sizes its actor pools from this."""

    cpus: float = Field(1.0, ge=0)
    gpus: float = Field(0.0, ge=0)
    memory_gb: float | None = Field(None, gt=0)
    # Number of parallel instances (actors) on Ray; the local executor runs one.
    concurrency: int = Field(1, ge=1)


class BackendConfig(Strict):
    """Config of a model backend; subclasses fix `type` and add their own fields."""

    type: str

    def build(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement build()")

    def model_ids(self) -> list[str]:
        """Models this backend will load, for `_run.json` and `capmill models`."""
        return []


class StageConfig(Strict):
    """Config of a stage; subclasses fix `type` and add their own fields."""

    type: str
    resources: Resources = Field(default_factory=Resources)

    def build(self) -> Stage:
        raise NotImplementedError(f"{type(self).__name__} does not implement build()")

    def backends(self) -> list[BackendConfig]:
        """Backends this stage uses (default: every BackendConfig field)."""
        found = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, BackendConfig):
                found.append(value)
        return found


def _resolve(group: str):
    def validate(value: Any) -> Any:
        if isinstance(value, BaseModel):
            return value
        if not isinstance(value, dict) or "type" not in value:
            raise ValueError(f"expected a mapping with a 'type' key, got {value!r}")
        cls = registry.config_class(group, value["type"])
        return cls.model_validate(value)

    return validate


# Fields typed with these accept any registered plugin's config, chosen by its `type`.
BackendSpec = Annotated[SerializeAsAny[BackendConfig], BeforeValidator(_resolve(registry.BACKENDS))]
StageSpec = Annotated[SerializeAsAny[StageConfig], BeforeValidator(_resolve(registry.STAGES))]
