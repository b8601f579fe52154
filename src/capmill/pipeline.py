"""Running a batch through decode and the stages; shared by every executor.

Whatever the executor, a batch goes through the same steps here, so local and Ray runs give
the same records: decode (with hygiene) → each stage on the samples still `ok` → drop
accounting.
"""

from __future__ import annotations

import time

from capmill.errors import CapmillError, CircuitOpenError, SampleError, is_transient_exception
from capmill.sample import DROPPED, RETRYABLE, STAGE_ERROR, TRANSIENT_ERROR, Sample
from capmill.stages.base import Stage


def run_stages(stages: list[Stage], batch: list[Sample], seconds: dict[str, float],
               trails: list[list[str]] | None = None, breaker: CircuitBreaker | None = None) -> list[Sample]:
    """Apply each stage to the samples still ok; returns the batch in its original order.

    A sample a stage does not return counts as dropped by that stage. An exception escaping
    a stage is retried one sample at a time, so one bad sample costs only its own row.
    `trails` (one list per sample, in batch order) gets the name of every stage a sample
    entered, for the per-stage counts of the commit record; `breaker` watches for a run of
    transient failures and raises CircuitOpenError to stop the run.
    """
    for stage in stages:
        live = [s for s in batch if s.ok]
        if not live:
            continue
        if trails is not None:
            for sample, trail in zip(batch, trails, strict=True):
                if sample.ok:
                    trail.append(stage.name)
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
        if breaker is not None:
            received = {s.key for s in live}
            breaker.observe(stage, [s for s in batch if s.key in received])
    return batch


class CircuitBreaker:
    """Stops a run whose backend is down: after `limit` consecutive samples that failed
    transiently in one stage, `observe` raises CircuitOpenError naming the stage and its backend
    (every sample in flight would otherwise wait out its retries, one after another)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.streak: dict[str, int] = {}

    def observe(self, stage: Stage, samples: list[Sample]) -> None:
        if not self.limit:
            return
        streak = self.streak.get(stage.name, 0)
        last = None
        for sample in samples:
            if sample.status in RETRYABLE:
                streak += 1
                last = sample.error
            else:
                streak = 0
        self.streak[stage.name] = streak
        if streak >= self.limit:
            raise CircuitOpenError(
                f"{streak} consecutive samples failed transiently in stage {stage.name} "
                f"({describe_backends(stage)}); last error: {last}. The shards in progress are left "
                f"for the rerun: check the backend, then run the same command again")


def describe_backends(stage: Stage) -> str:
    """The backends of a stage, as a user would recognise them in the config."""
    found = []
    for backend in stage.config.backends():
        where = getattr(backend, "base_url", None)
        models = ", ".join(backend.model_ids()) or "?"
        found.append(f"backend {backend.type} {models}" + (f" at {where}" if where else ""))
    return "; ".join(found) or "no backend"


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
            # A dropped connection or a GPU out of memory says nothing about the sample: it may
            # succeed when redone, so it must not be committed as its result.
            status = TRANSIENT_ERROR if is_transient_exception(e) else STAGE_ERROR
            live[0].fail(status, f"{stage.name}: {type(e).__name__}: {e}")
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
