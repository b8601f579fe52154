"""Any pipeline without weights: every model swapped for the tiny model of its role.

`capmill recipes show NAME --models DIR` and `capmill run --recipe NAME --models DIR` read the
folder that `python -m capmill.testing.tiny_models DIR` writes. Each stage says which backend
protocol each of its backend fields needs (`StageConfig.backend_roles`), and
`tiny_models.ROLES` says which tiny family stands in for that protocol, so a recipe, packaged
or not, runs end to end in seconds on a CPU. The captions are gibberish: this tests the
pipeline, not the models.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from capmill.components import backend_fields
from capmill.errors import ConfigError


def tiny_backend(role: type, models_dir: str) -> dict[str, str]:
    """The backend config of the tiny model playing `role` (a protocol class) in `models_dir`, or
    of the offline backend that plays it as it is (a role without a family in ROLES)."""
    from capmill.testing.tiny_models import ROLES

    entry = ROLES.get(role.__name__)
    if entry is None:
        raise ConfigError(f"no tiny model stands in for {role.__name__}; add its family to "
                          f"capmill.testing.tiny_models (FAMILIES, BUILDERS, ROLES)")
    if "family" not in entry:
        return dict(entry)
    folder = os.path.join(models_dir, entry["family"])
    if not os.path.isdir(folder):
        raise ConfigError(f"--models {models_dir}: {folder} does not exist; write the tiny models with "
                          f"`python -m capmill.testing.tiny_models {models_dir}`")
    return {"type": entry["type"], "model": folder}


# Random weights write gibberish that the guards reject and stages fall back from: the
# degenerate-result bounds would fail every smoke run, so they are off unless the config sets them.
SMOKE_RELIABILITY = {"fail_at_fallback_share": 2.0, "fail_at_drop_share": 2.0}


def with_tiny_models(tree: dict[str, Any], models_dir: str) -> dict[str, Any]:
    """A copy of the config `tree` in which every backend of every stage (defaults included) is
    the tiny model of its role from `models_dir`, and the degenerate-result bounds are off
    (`SMOKE_RELIABILITY`) unless the config sets them."""
    from capmill.config import parse_config

    config = parse_config(tree)
    out = copy.deepcopy(tree)
    for i, stage in enumerate(config.stages):
        roles = stage.backend_roles()
        for field in backend_fields(stage):
            value = getattr(stage, field)
            if value is None:
                continue
            if field not in roles:
                raise ConfigError(f"stage {i} ({stage.display_name}) does not say which backend protocol its "
                                  f"`{field}` needs (StageConfig.backend_roles), so --models cannot replace it")
            tiny = tiny_backend(roles[field], models_dir)
            # A list of backends (several captioners proposing candidates) keeps its length: each
            # entry becomes the tiny model of the field's role.
            out["stages"][i][field] = [dict(tiny) for _ in value] if isinstance(value, list) else tiny
    reliability = out.setdefault("reliability", {})
    for key, value in SMOKE_RELIABILITY.items():
        reliability.setdefault(key, value)
    return out
