"""TensorBoard event files through tensorboardX (no TensorFlow or torch needed): scalars,
length histograms, and the config and final summary as text, in LOGDIR/PROJECT/NAME; the
evaluations of the output in LOGDIR/PROJECT/NAME/eval. `tensorboard --logdir LOGDIR`."""

from __future__ import annotations

import json
import os
from typing import Any

from capmill.tracking.base import Tracker


class TensorBoardTracker(Tracker):
    def _open(self, run_config: dict[str, Any], resume_id: str | None = None) -> str:
        from tensorboardX import SummaryWriter

        run_dir = resume_id or os.path.join(self.config.logdir, self.config.project, self.name)
        # Evaluations of the output go to NAME/eval: TensorBoard drops a run's later steps when a
        # new event file in its folder restarts at a lower step.
        self.writer = SummaryWriter(logdir=os.path.join(run_dir, "eval") if resume_id else run_dir)
        if run_config:
            self.writer.add_text("config", "```\n" + json.dumps(run_config, indent=2) + "\n```", 0)
        return run_dir

    def _scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def _histograms(self, hists: dict[str, tuple[list[float], list[int]]], step: int) -> None:
        for tag, (edges, counts) in hists.items():
            total = sum(counts)
            mids = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
            self.writer.add_histogram_raw(
                tag, min=edges[0], max=edges[-1], num=total,
                sum=sum(m * c for m, c in zip(mids, counts, strict=True)),
                sum_squares=sum(m * m * c for m, c in zip(mids, counts, strict=True)),
                bucket_limits=edges[1:], bucket_counts=counts, global_step=step)
        self.writer.flush()

    def _summary(self, summary: dict[str, Any]) -> None:
        self.writer.add_text("summary", "```\n" + json.dumps(summary, indent=2) + "\n```", self.step)

    def _close(self, ok: bool) -> None:
        self.writer.close()
