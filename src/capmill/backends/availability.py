"""Where a model comes from and whether it can be had offline.

A backend's `model` is either a local folder (or file) or a Hugging Face hub id. Before any
`from_pretrained` runs, `resolve_model` turns it into a local path or raises one `SetupError`
that names the model, how to fetch it and how to point the config at a local copy — instead of
a hub client traceback halfway through loading. `capmill models` prints `locate` for every model
of a config.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from capmill.errors import SetupError

LOCAL, HUB_CACHE, HUB, MISSING, BUNDLED = "local folder", "hub cache", "hub", "missing", "bundled"

# "scheme:name" ids (fake:…, an HTTP backend's served model, open_clip ARCH:TAG) are not files this
# machine loads; a hub id or path never has a colon except a Windows drive letter.
_SERVED = re.compile(r"^[A-Za-z][\w.+-]*:(?![\\/])")

# owner/name as the hub spells repository ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ModelLocation:
    model: str
    source: str  # LOCAL, HUB_CACHE, HUB, MISSING or BUNDLED
    path: str | None  # local path when one exists
    offline: bool  # usable without network

    def describe(self) -> str:
        return self.path if self.path and self.path != self.model else self.source


def fetch_hint(model: str) -> str:
    if not meant_as_folder(model):
        folder = f"models/{model.rsplit('/', 1)[-1]}"
        return (f"fetch it with `hf download {model} --local-dir {folder}` on a machine with network "
                f"and set `model: {folder}` in the config, or point `model` at any local folder holding it")
    return "point `model` at a local folder holding the model files (config.json, weights, processor files)"


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _cached_snapshot(model: str, revision: str | None) -> str | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(model, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError):
        return None


def meant_as_folder(model: str) -> bool:
    """Whether `model` names a local folder rather than a hub id: a path that is absolute, starts
    with `.` or `~`, has more than one `/`, or whose first part is a folder here (`models/x`)."""
    if not _HUB_ID.match(model):
        return True
    return os.path.isdir(model.split("/", 1)[0])


def locate(model: str, revision: str | None = None) -> ModelLocation:
    """Where `model` would be loaded from, without downloading anything."""
    expanded = os.path.expanduser(model)
    if os.path.exists(expanded):
        return ModelLocation(model, LOCAL, os.path.abspath(expanded), True)
    if not _HUB_ID.match(model):
        return ModelLocation(model, MISSING, None, False)
    cached = _cached_snapshot(model, revision)
    if cached is not None:
        return ModelLocation(model, HUB_CACHE, cached, True)
    if meant_as_folder(model):
        return ModelLocation(model, MISSING, None, False)
    return ModelLocation(model, HUB, None, False)


def missing_folder(model: str, what: str = "model") -> str:
    """The message for a model that names a folder that does not exist: which folder, what its
    parent holds (with the nearest name), and what a model folder must contain."""
    from capmill.suggest import did_you_mean

    folder = os.path.abspath(os.path.expanduser(model))
    parent = os.path.dirname(folder)
    message = f"{what} {model!r}: the folder {folder} does not exist"
    if os.path.isdir(parent):
        entries = sorted(e for e in os.listdir(parent) if not e.startswith("."))
        shown = ", ".join(entries[:12]) + (", ..." if len(entries) > 12 else "")
        message += f" ({parent} holds: {shown or 'nothing'}).{did_you_mean(os.path.basename(folder), entries)}"
    else:
        message += f", nor does {parent}."
    return message + (" Point `model` at a folder holding the model files (config.json, weights, processor or "
                      "tokenizer files), or at a hub id (owner/name).")


def resolve_model(model: str, revision: str | None = None, what: str = "model") -> str:
    """A local path for `model`, downloading it when the hub is reachable; `SetupError` otherwise."""
    where = locate(model, revision)
    if where.path is not None:
        return where.path
    if where.source == MISSING:
        raise SetupError(missing_folder(model, what))
    if _hub_offline():
        raise SetupError(f"{what} {model!r} is not in the local hub cache and the hub is offline "
                         f"(HF_HUB_OFFLINE is set); {fetch_hint(model)}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(model, revision=revision)
    except (HfHubHTTPError, LocalEntryNotFoundError, HFValidationError, OSError) as e:
        # HfHubHTTPError covers unknown repos, gated repos and bad revisions; OSError covers a
        # network that cannot reach the hub.
        raise SetupError(f"{what} {model!r} could not be fetched from the hub ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'no detail'}); {fetch_hint(model)}") from e


T = TypeVar("T")


def load_pretrained(model: str, revision: str | None, what: str, load: Callable[[str], T], hint: str = "") -> T:
    """`load(path)` on the local path of `model` (`resolve_model`): what the loader raises on a
    folder that is not such a model becomes a SetupError naming `what`, the model and the path,
    with `hint` (what the model must be) after it."""
    path = resolve_model(model, revision, what)
    try:
        return load(path)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise SetupError(f"{what} {model!r} could not be loaded from {path} ({type(e).__name__}: {e})"
                         + (f"; {hint}" if hint else "")) from e


def config_models(config) -> list[tuple[str, str, str, str, bool | None]]:
    """(stage, backend type, model, where from, offline?) for every model of every stage of a run
    config; offline is None for models a backend serves rather than loads from files. Loads
    nothing: what `capmill models` and `capmill run --dry-run` print."""
    found = []
    for index, stage in enumerate(config.stages):
        for backend in stage.backends():
            for model in backend.model_ids():
                label = f"{index}:{stage.type}"
                if _SERVED.match(model) and not model.startswith("hf-hub:"):
                    found.append((label, backend.type, model, "served by the backend", None))
                    continue
                where = locate(model.removeprefix("hf-hub:"))
                found.append((label, backend.type, model, where.describe() if where.path else where.source, where.offline))
    return found
