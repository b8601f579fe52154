"""The `tracking:` section of a run config: which experiment tracker gets the run's figures.

Tracking settings say where figures are sent, not what the output is, so they are left out of
the config hash: tracking can be added to, changed in or removed from a run that is resumed.
Each tracker's package is imported only when a config names it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import Field

from capmill.components import Strict
from capmill.errors import SetupError

if TYPE_CHECKING:
    from capmill.tracking.base import Tracker


class TrackingConfig(Strict):
    type: str
    # W&B project, MLflow experiment, TensorBoard folder under `logdir`.
    project: str = "capmill"
    # The tracker's run name; default: the output folder's name.
    name: str | None = None
    tags: list[str] = Field(default_factory=list)

    # (module, class, package to install, extra) of the implementation.
    _impl: ClassVar[tuple[str, str, str, str]]

    def run_name(self, out_dir: str) -> str:
        return self.name or os.path.basename(os.path.normpath(out_dir)) or "capmill"

    def locations(self) -> list[str]:
        """Local folders the tracker writes to (checked to lie outside the output directory)."""
        return []

    def build(self, out_dir: str) -> Tracker:
        """Import the tracker's package (a missing one is a SetupError with the install line)."""
        from importlib import import_module

        module, cls, package, extra = self._impl
        try:
            import_module(package)
        except ImportError:
            raise SetupError(f"tracking type {self.type!r} needs the {package} package: "
                             f"pip install 'capmill[{extra}]'") from None
        return getattr(import_module(module), cls)(self, out_dir)


class WandbTracking(TrackingConfig):
    type: Literal["wandb"] = "wandb"
    entity: str | None = None
    # online, offline (files only, `wandb sync` later) or disabled; None: WANDB_MODE or W&B's default.
    mode: Literal["online", "offline", "disabled"] | None = None
    # Where W&B keeps its files; None: WANDB_DIR or the working directory.
    dir: str | None = None
    _impl: ClassVar[tuple[str, str, str, str]] = ("capmill.tracking.wandb_run", "WandbTracker", "wandb", "wandb")

    def locations(self) -> list[str]:
        return [self.dir] if self.dir else []


class TensorBoardTracking(TrackingConfig):
    type: Literal["tensorboard"] = "tensorboard"
    # Event files go to LOGDIR/PROJECT/NAME (`tensorboard --logdir LOGDIR`).
    logdir: str = "runs"
    _impl: ClassVar[tuple[str, str, str, str]] = ("capmill.tracking.tensorboard_run", "TensorBoardTracker", "tensorboardX", "tensorboard")

    def locations(self) -> list[str]:
        return [self.logdir]


class MlflowTracking(TrackingConfig):
    type: Literal["mlflow"] = "mlflow"
    # None: MLFLOW_TRACKING_URI or MLflow's default. A local folder (file store) needs
    # MLFLOW_ALLOW_FILE_STORE=true with MLflow 3; sqlite:///mlflow.db or a server works as is.
    tracking_uri: str | None = None
    _impl: ClassVar[tuple[str, str, str, str]] = ("capmill.tracking.mlflow_run", "MlflowTracker", "mlflow", "mlflow")

    def locations(self) -> list[str]:
        uri = self.tracking_uri
        if uri and "://" not in uri:
            return [uri]
        if uri and uri.startswith("file://"):
            return [uri.removeprefix("file://")]
        return []


TrackingSpec = Annotated[WandbTracking | TensorBoardTracking | MlflowTracking, Field(discriminator="type")]
