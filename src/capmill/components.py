"""Base classes for the typed config of every pluggable component.

Each component (stage, backend) has one pydantic config class with unknown fields rejected.
The config travels (to threads, to Ray workers); `build()` turns it into the live object, which
must not load models until its `setup`.
"""

from __future__ import annotations

import types
import typing
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializeAsAny,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from capmill import registry
from capmill.keys import Key, StageIO
from capmill.suggest import closest

if TYPE_CHECKING:
    from capmill.stages.base import Stage


class Strict(BaseModel):
    """A config section: unknown keys are errors, so a typo never passes silently. The error
    lists the section's valid keys, and says where a key belongs when it is a key of one of the
    section's own settings blocks (`max_new_tokens` → `params:`, `gpus` → `resources:`)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    # Optional fields added after outputs were made with this section: left out of its dump while
    # they are None, so a config that does not use them keeps the hash (and resume) it had.
    omit_when_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if isinstance(out, dict):
            for name in self.omit_when_none:
                if name in out and out[name] is None:
                    del out[name]
        return out

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [k for k in data if k not in cls.model_fields]
            if unknown:
                raise ValueError(unknown_keys_message(cls, unknown))
        return data

    @classmethod
    def misplaced_hint(cls, key: str) -> str | None:
        """Where `key` belongs when it is not a key of this section, or None."""
        for name, info in cls.model_fields.items():
            for nested in _settings_models(info.annotation):
                if key in nested.model_fields:
                    return f"`{key}` is a setting of `{name}:` here; write `{name}: {{{key}: ...}}`"
        return None


def _settings_models(annotation: Any) -> list[type[Strict]]:
    """Settings blocks a field holds (`params`, `resources`, `guards`), unwrapping `X | None`;
    components chosen by a `type` key (backends, inputs) are not settings blocks."""
    if isinstance(annotation, type):
        if issubclass(annotation, Strict) and "type" not in annotation.model_fields:
            return [annotation]
        return []
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, Annotated):
        return [m for arg in typing.get_args(annotation) for m in _settings_models(arg)]
    return []


def unknown_keys_message(cls: type[Strict], unknown: list[Any]) -> str:
    valid = sorted(cls.model_fields)
    parts = []
    for key in unknown:
        near = closest(str(key), valid)
        hint = cls.misplaced_hint(str(key)) or (f"did you mean {' or '.join(map(repr, near))}?" if near else "")
        parts.append(f"unknown key {key!r}" + (f" ({hint})" if hint else ""))
    return "; ".join(parts) + f". Valid keys here: {', '.join(valid)}"


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

    @classmethod
    def misplaced_hint(cls, key: str) -> str | None:
        hint = super().misplaced_hint(key)
        if hint is None and "params" not in cls.model_fields:
            from capmill.backends.base import GenerationParams

            if key in GenerationParams.model_fields:
                hint = (f"decoding settings are not a setting of this backend; give them to the stage as "
                        f"`params: {{{key}: ...}}`")
        return hint

    def build(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement build()")

    def model_ids(self) -> list[str]:
        """Models this backend will load, for `_run.json` and `capmill models`."""
        return []


class StageConfig(Strict):
    """Config of a stage; subclasses fix `type` and add their own fields.

    Every stage declares, from its config, what it reads and writes (`io`) and which backend
    protocol each of its backend fields must implement (`backend_roles`): the first lets
    `capmill.chain` check a pipeline before it runs, the second lets `--models DIR` swap every
    model of a recipe for the tiny model of the same role.
    """

    # An unset name is left out of the dump, so configs without names keep the hash (and resume)
    # they had before stages could be named.
    omit_when_none: ClassVar[frozenset[str]] = frozenset({"name"})

    type: str
    # Display name (timings, drop reasons, progress); default: the type. Scoring stages also use
    # it as the default prefix of their score keys, so two stages of one type stay apart.
    name: str | None = Field(None, min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    resources: Resources = Field(default_factory=Resources)
    # Set by the run config when an unnamed stage repeats a type ("filter", "filter_2"), so
    # timings stay apart without changing what the config says or hashes.
    _position_name: str | None = PrivateAttr(None)

    @property
    def display_name(self) -> str:
        return self.name or self._position_name or self.type

    def build(self) -> Stage:
        raise NotImplementedError(f"{type(self).__name__} does not implement build()")

    def io(self, available: frozenset[Key]) -> StageIO:
        """What this stage reads and writes, given the keys `available` when it runs (a stage
        that works on "every caption" writes one score per caption there is).

        Every stage implements this; a read listed here that no earlier stage writes and the
        input does not provide stops the run before it starts (see ARCHITECTURE.md, "Adding a
        stage").
        """
        raise NotImplementedError(
            f"stage {self.type!r} ({type(self).__module__}.{type(self).__name__}) does not declare what it reads "
            f"and writes: implement `io(available)` returning a capmill.keys.StageIO"
        )

    def backend_roles(self) -> dict[str, type]:
        """Backend field name → the protocol (capmill.backends.base) its backend must implement.
        Every BackendConfig field of the stage must be listed; stages without backends keep {}."""
        return {}

    def backends(self) -> list[BackendConfig]:
        """Backends this stage uses (default: every BackendConfig field, and every backend of a
        field that holds a list of them)."""
        found = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, BackendConfig):
                found.append(value)
            elif isinstance(value, list):
                found.extend(v for v in value if isinstance(v, BackendConfig))
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


def default_backend(type_name: str, **fields: Any):
    """A `default_factory` for a backend field: the registered config of `type_name`, validated
    like one written in a config (a plain dict default would reach `build()` unvalidated)."""

    def make() -> BackendConfig:
        return registry.config_class(registry.BACKENDS, type_name).model_validate({"type": type_name, **fields})

    return make


def backend_fields(config: StageConfig) -> list[str]:
    """Names of the fields of a stage config that hold a backend (or a list of backends, all
    playing the field's role)."""
    return [name for name, info in type(config).model_fields.items() if _holds_backend(info.annotation)]


def _holds_backend(annotation: Any) -> bool:
    if isinstance(annotation, type):
        return issubclass(annotation, BackendConfig)
    return any(_holds_backend(arg) for arg in typing.get_args(annotation))


# Fields typed with these accept any registered plugin's config, chosen by its `type`.
BackendSpec = Annotated[SerializeAsAny[BackendConfig], BeforeValidator(_resolve(registry.BACKENDS))]
StageSpec = Annotated[SerializeAsAny[StageConfig], BeforeValidator(_resolve(registry.STAGES))]
