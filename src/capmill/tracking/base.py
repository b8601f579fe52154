"""What a tracker logs, whatever the tracker: one set of figures per committed shard, the final
summary, and each evaluation of the output.

    per shard (step = shards committed by this invocation):
      shard/samples, shard/samples_per_s (since the previous commit), shard/seconds/STEP,
      run/samples, run/shards_done, run/samples_per_s, status/STATUS and drops/REASON (running
      totals), captions/KEY/{words,clip_tokens}_{mean,p50,p95}, and length histograms
      captions/KEY/words and captions/KEY/clip_tokens
    at the end: the run summary (`capmill run --json`)
    per evaluation (`capmill eval` on the output): eval/FIELD/METRIC

The tracker is attached as a listener of the run's summary, so every executor reports through
it. A tracker that fails while the run goes on stops logging and says so in the summary; the
data is not affected. `OUT/_tracking.json` names the tracker run, so `capmill eval` logs to it.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from capmill.errors import ConfigError

if TYPE_CHECKING:
    from capmill.progress import RunSummary
    from capmill.tracking.config import TrackingConfig

TRACKING_FILE = "_tracking.json"
_UNSAFE = re.compile(r"[^\w\-./]+")
MAX_BINS = 64


def metric_name(text: str) -> str:
    """A name every tracker keeps as it is: drop reasons and score keys hold spaces, colons and
    '<', which TensorBoard and MLflow rewrite or refuse ("filter: clip:dsc < 0.25" →
    "filter_clip_dsc_0.25")."""
    return _UNSAFE.sub("_", text).strip("_") or "_"


def length_histogram(hist: dict[str, int]) -> tuple[list[float], list[int]] | None:
    """(bin edges, counts) of an exact length histogram {length: count}, at most MAX_BINS bins."""
    if not hist:
        return None
    import numpy as np

    values = np.array([int(k) for k in hist], dtype=np.float64)
    weights = np.array(list(hist.values()), dtype=np.float64)
    lo, hi = values.min(), values.max()
    bins = int(min(MAX_BINS, hi - lo + 1))
    counts, edges = np.histogram(values, bins=bins, range=(lo - 0.5, hi + 0.5), weights=weights)
    return edges.tolist(), [int(c) for c in counts]


def _inside(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([path, root]) == root


class Tracker(ABC):
    def __init__(self, config: TrackingConfig, out_dir: str):
        self.config = config
        self.out_dir = out_dir
        self.name = config.run_name(out_dir)
        for where in config.locations():
            if _inside(where, out_dir):
                raise ConfigError(f"tracking: {where!r} is inside the output directory {out_dir!r}, which holds only "
                                  f"capmill's files; put the tracker's files beside it")
        self.step = 0
        self.started = False
        self._lock = threading.Lock()
        self._start_time = self._last = time.monotonic()

    # -- what each tracker implements
    @abstractmethod
    def _open(self, run_config: dict[str, Any], resume_id: str | None = None) -> str:
        """Start (or, with resume_id, reopen) the tracker run; return its id."""

    @abstractmethod
    def _scalars(self, values: dict[str, float], step: int) -> None: ...

    @abstractmethod
    def _histograms(self, hists: dict[str, tuple[list[float], list[int]]], step: int) -> None: ...

    @abstractmethod
    def _summary(self, summary: dict[str, Any]) -> None: ...

    @abstractmethod
    def _close(self, ok: bool) -> None: ...

    # -- the run's life cycle
    def start(self, run_config: dict[str, Any], config_hash: str | None = None) -> None:
        self.run_id = self._open({**run_config, "config_hash": config_hash})
        self.started = True
        self._start_time = self._last = time.monotonic()

    def on_shard(self, stats: dict[str, Any], summary: RunSummary) -> None:
        """RunSummary listener: called after each committed shard."""
        with self._lock:
            now = time.monotonic()
            self.step += 1
            values = shard_figures(stats, summary, now - self._last, now - self._start_time)
            self._last = now
            self._scalars(values, self.step)
            hists = {}
            for key, tally in summary.captions.to_dict().items():
                for unit in ("words", "clip_tokens"):
                    h = length_histogram(tally["hist"][unit])
                    if h is not None:
                        hists[f"captions/{metric_name(key)}/{unit}"] = h
            if hists:
                self._histograms(hists, self.step)

    def finish(self, summary: RunSummary | None) -> None:
        """Log the final summary (None: the run raised) and close; remember the tracker run in
        the output directory for `capmill eval`."""
        with self._lock:
            if summary is not None:
                self._summary(summary.to_dict())
            self._close(ok=summary is not None and summary.ok)
        if summary is not None and os.path.exists(os.path.join(self.out_dir, "_run.json")):
            record = {"type": self.config.type, "run_id": self.run_id, "name": self.name, "project": self.config.project}
            with open(os.path.join(self.out_dir, TRACKING_FILE), "w", encoding="utf-8") as f:
                json.dump(record, f, indent=2)
                f.write("\n")

    def log_evaluation(self, entry: dict[str, Any], step: int) -> None:
        self._scalars(evaluation_figures(entry), step)


def evaluation_figures(entry: dict[str, Any]) -> dict[str, float]:
    """An evaluation's numeric figures under `eval/<field>/<metric>`."""
    values = {}
    for field, metrics in entry["metrics"].items():
        for metric, value in metrics.items():
            if isinstance(value, (int, float)):
                values[f"eval/{metric_name(field)}/{metric_name(metric)}"] = float(value)
    return values


def shard_figures(stats: dict[str, Any], summary: RunSummary, since_last: float, elapsed: float) -> dict[str, float]:
    values: dict[str, float] = {
        "shard/samples": stats["samples"],
        "shard/samples_per_s": stats["samples"] / since_last if since_last > 0 else 0.0,
        "run/samples": summary.samples,
        "run/shards_done": summary.shards_done,
        "run/samples_per_s": summary.samples / elapsed if elapsed > 0 else 0.0,
    }
    for step, seconds in stats.get("seconds", {}).items():
        values[f"shard/seconds/{metric_name(step)}"] = seconds
    for status, n in summary.by_status.items():
        values[f"status/{metric_name(status)}"] = n
    for reason, n in summary.drops.items():
        values[f"drops/{metric_name(reason)}"] = n
    for key, tally in summary.captions.to_dict().items():
        for unit in ("words", "clip_tokens"):
            for stat, value in tally[unit].items():
                if value is not None:
                    values[f"captions/{metric_name(key)}/{unit}_{stat}"] = value
    return {k: float(v) for k, v in values.items()}


def open_tracker(config: TrackingConfig, out_dir: str, run_config: dict[str, Any], config_hash: str | None) -> Tracker:
    """Build and start a tracker at setup, before any work: a missing package or a tracker that
    cannot start stops the run here."""
    tracker = config.build(out_dir)
    tracker.start(run_config, config_hash)
    return tracker


def log_evaluation(out_dir: str, tracking: dict[str, Any], entry: dict[str, Any]) -> None:
    """Send an evaluation of a run output to the run's tracker (the run named in
    OUT/_tracking.json, reopened; a new one when the run never logged)."""
    from pydantic import TypeAdapter

    from capmill.eval.history import load
    from capmill.tracking.config import TrackingSpec

    config = TypeAdapter(TrackingSpec).validate_python(tracking)
    tracker = config.build(out_dir)
    previous = None
    path = os.path.join(out_dir, TRACKING_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
    if previous and previous.get("type") == config.type:
        tracker.run_id = tracker._open({}, resume_id=previous["run_id"])
    else:
        tracker.run_id = tracker._open({"evaluation_only": True})
    try:
        tracker.log_evaluation(entry, step=len(load(out_dir)))
    finally:
        tracker._close(ok=True)
