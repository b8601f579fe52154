"""Experiment tracking: a run's figures to Weights & Biases, TensorBoard or MLflow."""

from capmill.tracking.base import TRACKING_FILE, Tracker, log_evaluation, open_tracker
from capmill.tracking.config import MlflowTracking, TensorBoardTracking, TrackingSpec, WandbTracking

__all__ = ["TRACKING_FILE", "MlflowTracking", "TensorBoardTracking", "Tracker", "TrackingSpec", "WandbTracking",
           "log_evaluation", "open_tracker"]
