"""Plugin lookup through entry points.

Built-in backends and stages are declared in capmill's own `pyproject.toml` under the entry
point groups below, exactly as a third-party package declares its own; nothing registers itself
at import time. An entry point names a pydantic config class whose `type` field matches the
entry point's name and whose `build()` makes the component.

Tests (and notebooks) that define a component in place make it resolvable for the length of a
`with registered(...)` block instead of writing an entry point.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from capmill.errors import ConfigError
from capmill.suggest import did_you_mean

BACKENDS = "capmill.backends"
STAGES = "capmill.stages"

# Components registered in place by `registered`, by group and type name.
_in_place: dict[str, dict[str, type]] = {BACKENDS: {}, STAGES: {}}


@cache
def available(group: str) -> dict[str, Any]:
    """Entry points of `group` by name (not yet imported)."""
    return {ep.name: ep for ep in entry_points(group=group)}


def names(group: str) -> list[str]:
    """Every type name `group` resolves: entry points and components registered in place."""
    return sorted({*available(group), *_in_place.get(group, {})})


def config_class(group: str, type_name: str) -> type:
    """Import and return the config class registered as `type_name` in `group`."""
    if type_name in _in_place.get(group, {}):
        return _in_place[group][type_name]
    eps = available(group)
    if type_name not in eps:
        known = names(group)
        kind = group.rsplit(".", 1)[-1].rstrip("s")
        raise ConfigError(
            f"unknown {kind} type {type_name!r}; registered: {', '.join(known) or '(none installed)'}."
            f"{did_you_mean(str(type_name), known)} "
            f"Third-party {kind}s register through the {group!r} entry point group."
        )
    return eps[type_name].load()


@contextmanager
def registered(group: str, *config_classes: type) -> Iterator[None]:
    """Make the given config classes resolvable by their `type` inside the block, as if their
    package declared them as entry points of `group` (STAGES or BACKENDS):

        with registry.registered(registry.STAGES, ExplodeConfig):
            run(parse_config({..., "stages": [{"type": "explode"}]}))

    For test doubles and experiments; a package registers its components through entry points.
    """
    table = _in_place.setdefault(group, {})
    added = []
    try:
        for cls in config_classes:
            name = cls.model_fields["type"].default
            if not isinstance(name, str) or name in table or name in available(group):
                raise ValueError(f"{cls.__name__}: `type` must default to a name not yet registered in {group}, "
                                 f"got {name!r}")
            table[name] = cls
            added.append(name)
        yield
    finally:
        for name in added:
            table.pop(name, None)
