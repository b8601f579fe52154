"""Plugin lookup through entry points.

Built-in backends and stages are declared in capmill's own `pyproject.toml` under the entry
point groups below, exactly as a third-party package declares its own; nothing registers itself
at import time. An entry point names a pydantic config class whose `type` field matches the
entry point's name and whose `build()` makes the component.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any

from capmill.errors import ConfigError

BACKENDS = "capmill.backends"
STAGES = "capmill.stages"


@cache
def available(group: str) -> dict[str, Any]:
    """Entry points of `group` by name (not yet imported)."""
    return {ep.name: ep for ep in entry_points(group=group)}


def config_class(group: str, type_name: str) -> type:
    """Import and return the config class registered as `type_name` in `group`."""
    eps = available(group)
    if type_name not in eps:
        choices = ", ".join(sorted(eps)) or "(none installed)"
        kind = group.rsplit(".", 1)[-1].rstrip("s")
        raise ConfigError(
            f"unknown {kind} type {type_name!r}; registered: {choices}. "
            f"Third-party {kind}s register through the {group!r} entry point group."
        )
    return eps[type_name].load()
