"""Running a batch through decode and the stages; shared by every executor.

Whatever the executor, a batch goes through the same steps here, so local and Ray runs give
the same records: decode (with hygiene) → each stage on the samples still `ok` → drop
accounting.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from capmill.errors import CapmillError, SampleError
from capmill.sample import DROPPED, STAGE_ERROR, Sample
from capmill.stages.base import Stage
from capmill.text.tally import CaptionTally


@dataclass
class ShardStats:
    """Counters for one shard; written as `_stats/SHARD.json`, the shard's commit record."""

    shard: str
    samples: int = 0
    by_status: Counter = field(default_factory=Counter)
    drops: Counter = field(default_factory=Counter)
    seconds: defaultdict = field(default_factory=lambda: defaultdict(float))
    outputs: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # Caption lengths, length-policy outcomes, fallbacks and output-guard counts per caption key.
    captions: CaptionTally = field(default_factory=CaptionTally)

    def count(self, sample: Sample) -> None:
        self.samples += 1
        if sample.status != DROPPED:
            self.captions.add(sample)
        else:  # a guard's drop (or a later stage's) still counts what the guards rejected
            self.captions.add_guards(sample)
        self.by_status[sample.status] += 1
        if sample.status == DROPPED:
            self.drops[sample.error or "unspecified"] += 1

    def merge_seconds(self, seconds: dict[str, float]) -> None:
        for name, value in seconds.items():
            self.seconds[name] += value

    def to_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "samples": self.samples,
            "by_status": dict(sorted(self.by_status.items())),
            "drops": dict(sorted(self.drops.items())),
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
            "outputs": self.outputs,
            "captions": self.captions.to_dict(),
            **self.extra,
        }


def run_stages(stages: list[Stage], batch: list[Sample], seconds: dict[str, float]) -> list[Sample]:
    """Apply each stage to the samples still ok; returns the batch in its original order.

    A sample a stage does not return counts as dropped by that stage. An exception escaping
    a stage is retried one sample at a time, so one bad sample costs only its own row.
    """
    for stage in stages:
        live = [s for s in batch if s.ok]
        if not live:
            continue
        start = time.perf_counter()
        returned = _process_isolating(stage, live)
        seconds[stage.name] = seconds.get(stage.name, 0.0) + time.perf_counter() - start
        by_key = {s.key: s for s in returned}
        merged = []
        for sample in batch:
            if sample.ok and sample.key not in by_key:
                sample.status, sample.error = DROPPED, stage.name
            merged.append(by_key.get(sample.key, sample))
        batch = merged
    return batch


def _process_isolating(stage: Stage, live: list[Sample]) -> list[Sample]:
    try:
        return stage.process(live)
    except CapmillError as e:
        if not isinstance(e, SampleError):
            raise  # setup/config problems stop the run
        if len(live) == 1:
            live[0].fail(e.status, f"{stage.name}: {e.reason}")
            return live
    except Exception as e:
        if len(live) == 1:
            live[0].fail(STAGE_ERROR, f"{stage.name}: {type(e).__name__}: {e}")
            return live
    out: list[Sample] = []
    for sample in live:
        out.extend(_process_isolating(stage, [sample]))
    return out


def release_images(batch: list[Sample]) -> None:
    """Drop decoded pixels (images, video frames, waveforms) once no stage needs them, so memory
    holds only what is queued."""
    for sample in batch:
        sample.media.release()
