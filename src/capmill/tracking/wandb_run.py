"""Weights & Biases: scalars and histograms in the run's history, the final summary in its
summary. `mode: offline` (or WANDB_MODE=offline) writes files only; `wandb sync` uploads them."""

from __future__ import annotations

from typing import Any

from capmill.tracking.base import Tracker, evaluation_figures


class WandbTracker(Tracker):
    def _open(self, run_config: dict[str, Any], resume_id: str | None = None) -> str:
        import wandb

        cfg = self.config
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, name=self.name, tags=cfg.tags or None, dir=cfg.dir,
            mode=cfg.mode, config=run_config or None, id=resume_id, resume="allow" if resume_id else None,
            reinit="create_new", settings=wandb.Settings(console="off", silent=True),
        )
        return self.run.id

    def _scalars(self, values: dict[str, float], step: int) -> None:
        # W&B steps only grow within a run; a reopened run (an evaluation) continues after them.
        self.run.log(values, step=None if self.resumed else step)

    def log_evaluation(self, entry: dict[str, Any], step: int) -> None:
        # Committed at once: the one row of an evaluation does not wait for finish() to flush it.
        self.run.log(evaluation_figures(entry), step=None if self.resumed else step, commit=True)

    @property
    def resumed(self) -> bool:
        return self.run.resumed if hasattr(self.run, "resumed") else False

    def _histograms(self, hists: dict[str, tuple[list[float], list[int]]], step: int) -> None:
        import wandb

        self.run.log({tag: wandb.Histogram(np_histogram=(counts, edges)) for tag, (edges, counts) in hists.items()},
                     step=step)

    def _summary(self, summary: dict[str, Any]) -> None:
        self.run.summary.update({"final": summary})

    def _close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)
