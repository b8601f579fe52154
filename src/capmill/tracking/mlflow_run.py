"""MLflow through its client (the caller's active MLflow run, if any, is left alone): metrics
per step, the config and summary as JSON artifacts, length histograms as an artifact (MLflow
has no histogram type) beside their mean/p50/p95 metrics."""

from __future__ import annotations

import time
from typing import Any

from capmill.tracking.base import Tracker


class MlflowTracker(Tracker):
    def _open(self, run_config: dict[str, Any], resume_id: str | None = None) -> str:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.config.tracking_uri)
        if resume_id:
            self.run_id = resume_id
            return resume_id
        experiment = self.client.get_experiment_by_name(self.config.project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.config.project)
        tags = {f"capmill.tag.{t}": "1" for t in self.config.tags}
        if run_config.get("config_hash"):
            tags["capmill.config_hash"] = str(run_config["config_hash"])
        run = self.client.create_run(experiment_id, run_name=self.name, tags=tags)
        self.run_id = run.info.run_id
        if run_config:
            self.client.log_dict(self.run_id, run_config, "config.json")
        return self.run_id

    def _scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def _histograms(self, hists: dict[str, tuple[list[float], list[int]]], step: int) -> None:
        self._hists = hists  # the latest (cumulative) histograms, written once at the end

    def _summary(self, summary: dict[str, Any]) -> None:
        self.client.log_dict(self.run_id, summary, "summary.json")
        hists = getattr(self, "_hists", None)
        if hists:
            self.client.log_dict(self.run_id, {t: {"edges": e, "counts": c} for t, (e, c) in hists.items()},
                                 "caption_lengths.json")

    def _close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")
