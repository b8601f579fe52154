"""What runs inside Ray workers: shard owners, stage actor pools and the key ledger.

    ShardOwner (actor, `shards_in_flight` of them)      one shard at a time, whole:
        read → decode → stages → write → commit           the local executor's stream (StreamRun)
             │ pooled stages only: batches of Samples
             ▼
    StageActor pools (one per pooled stage)             GPU stages, or stages given a `concurrency`

A shard owner runs the local executor's stream on its shard, with its own ShardCommitter built
from the config and the output path: it writes the shard's files and its commit record itself,
so a shard is committed the moment its last sample is written, and nothing but a small outcome
(the commit record, or why the shard was not committed) goes back to the driver.

Stages run inside the owner unless they ask for GPUs or set `resources.concurrency`; those get
their own actor pool, which every owner feeds batch by batch (`PooledStage`). Samples cross to a
pooled stage pickled, pixels included; what comes back leaves out the pixels and bytes the stage
did not replace, since the owner still holds them.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from capmill.commit import ShardCommitter
from capmill.errors import CapmillError, DuplicateKeyError
from capmill.executors.base import RunJob
from capmill.executors.local import LocalExecutorConfig, StreamRun
from capmill.outputdir import OutputDir
from capmill.progress import Progress, RunSummary
from capmill.sample import Sample
from capmill.stages.base import RunContext

log = logging.getLogger("capmill.ray")


def is_pooled(stage_config) -> bool:
    """A stage gets its own actor pool when it asks for GPUs, sets its `concurrency`, or keeps
    run-wide state while streaming (`keeps_run_state`: one actor must see every sample); every
    other stage runs inside the shard owners (as wide as they are, with no extra hop)."""
    res = stage_config.resources
    return res.gpus > 0 or "concurrency" in res.model_fields_set or bool(getattr(stage_config, "keeps_run_state", False))


class StageActor:
    """One pooled stage in a Ray actor: built from its config and set up once."""

    def __init__(self, stage_config, context: dict[str, Any]):
        self.setup_error: CapmillError | None = None
        self.stage = stage_config.build()
        try:
            self.stage.setup(RunContext(**context))
        except CapmillError as e:
            # Ray reports an actor failing in its constructor by message only; raised from a
            # call instead, the error reaches the driver as itself, with its advice.
            self.setup_error = e

    def ready(self) -> str:
        if self.setup_error is not None:
            raise self.setup_error
        return os.uname().nodename

    def process(self, samples: list[Sample]) -> list[tuple[Sample, bool, bool]]:
        """The stage on one batch; per sample whether its pixels and bytes are those it was sent
        (then they are not sent back)."""
        if self.setup_error is not None:
            raise self.setup_error
        sent = {id(s.image.image) for s in samples if s.image.image is not None}
        sent |= {id(s.media.audio) for s in samples if s.media.audio is not None}  # an audio sample's waveform
        sent |= {id(s.image.data) for s in samples if s.image.data is not None}
        out = []
        for sample in self.stage.process(samples):
            decoded = sample.image.image if sample.image.image is not None else sample.media.audio
            same_pixels = decoded is not None and id(decoded) in sent
            same_data = sample.image.data is not None and id(sample.image.data) in sent
            if same_pixels:
                sample.image.image = sample.media.audio = None
            if same_data:
                sample.image.data = None
            out.append((sample, same_pixels, same_data))
        return out

    def __del__(self):
        stage = getattr(self, "stage", None)
        if stage is not None:
            try:
                stage.teardown()
            except Exception:
                pass


class PooledStage:
    """Stands in a shard owner's stage list for a stage that runs in an actor pool: `process`
    sends the batch to one actor of the pool (round robin, starting at the owner's index so
    owners spread over the pool) and gives back the stage's samples."""

    def __init__(self, config, actors: list, offset: int = 0):
        self.config = config
        self.actors = actors
        self.turn = offset

    @property
    def name(self) -> str:
        return self.config.display_name

    def process(self, batch: list[Sample]) -> list[Sample]:
        actor = self.actors[self.turn % len(self.actors)]
        self.turn += 1
        try:
            returned = ray.get(actor.process.remote(batch))
        except ray.exceptions.RayTaskError as e:
            # The stage's own exception, as an inline stage would raise it: the sample that
            # caused it gets the same status and message as in a local run.
            cause = getattr(e, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        originals = {s.key: s for s in batch}
        out = []
        for sample, same_pixels, same_data in returned:
            original = originals.get(sample.key)
            if original is not None:
                if same_pixels:
                    sample.image.image, sample.media.audio = original.image.image, original.media.audio
                if same_data:
                    sample.image.data = original.image.data
            out.append(sample)
        return out

    def teardown(self) -> None:
        pass


class KeyLedger:
    """key → shard over the output, for the duplicate-key check of shards written by many
    owners: each owner hands over a shard's keys once, before committing it."""

    def __init__(self, out_path: str, storage_options: dict | None = None):
        self.keys = OutputDir(out_path, storage_options).committed_keys()

    def claim(self, shard: str, keys: list[str]) -> str | None:
        for key in keys:
            other = self.keys.setdefault(key, shard)
            if other != shard:
                return (f"key {key!r} is in shard {other} and in shard {shard}; "
                        f"set input.key_prefix: shard to make keys unique per shard")
        return None


class OwnerCommitter(ShardCommitter):
    """The shared committer, plus the run-wide duplicate-key check through the ledger."""

    def __init__(self, *args, ledger=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ledger = ledger
        self.keys: dict[str, list[str]] = {}

    def write(self, state, samples, trails=None) -> None:
        if self.ledger is not None:
            self.keys.setdefault(state.shard.name, []).extend(s.key for s in samples)
        super().write(state, samples, trails)

    def finish(self, state) -> bool:
        keys = self.keys.pop(state.shard.name, [])
        if self.ledger is not None and state.error is None:
            conflict = ray.get(self.ledger.claim.remote(state.shard.name, keys))
            if conflict is not None:
                state.error = DuplicateKeyError(f"{conflict} ({state.shard.source})")
        return super().finish(state)


class ShardOwner:
    """Owns one shard at a time, whole: reads, decodes, runs the inline stages (and feeds the
    pooled ones), writes and commits it; returns the outcome to the driver."""

    def __init__(self, run_config, context: dict[str, Any], pools: dict[int, list], index: int,
                 local_config: LocalExecutorConfig):
        self.run = run_config
        self.local_config = local_config
        self.setup_error: CapmillError | None = None
        self.stages: list = []
        self.current: StreamRun | None = None
        self.stopped: str | None = None
        try:
            for i, stage_config in enumerate(run_config.stages):
                if i in pools:
                    self.stages.append(PooledStage(stage_config, pools[i], offset=index))
                    continue
                stage = stage_config.build()
                self.stages.append(stage)
                stage.setup(RunContext(**context))
        except CapmillError as e:
            self.setup_error = e
        self.reader = run_config.input.build()

    def ready(self) -> str:
        if self.setup_error is not None:
            raise self.setup_error
        return os.uname().nodename

    def run_shard(self, task, lease, ledger=None, claims=None) -> dict[str, Any]:
        """Process one shard; the outcome names its commit record, or why it has none."""
        name = task.shard.name
        if self.stopped is not None:
            return {"shard": name, "deferred": f"{task.shard.source}: not committed: the run stopped"}
        committed: list[dict[str, Any]] = []
        summary = RunSummary(shards_total=1, listeners=[lambda stats, _: committed.append(stats)])
        out = OutputDir(self.run.output.path, self.run.output.storage_options)
        progress = Progress(total_shards=1, enabled=False)
        committer = OwnerCommitter(self.run, out, summary, progress, lease, self.run.reliability, ledger=ledger,
                                   claims=claims)
        job = RunJob(self.run, self.reader, [task], out, summary, progress, claim=lambda: committer)
        self.current = StreamRun(self.local_config, self.stages, job, committer)
        if self.stopped is not None:
            self.current.request_stop(self.stopped)
        try:
            self.current.execute()
        finally:
            self.current = None
        return {"shard": name, "stats": committed[0] if committed else None,
                "failed": summary.failed_shards.get(name), "deferred": summary.deferred_shards.get(name),
                "stopped": summary.stopped}

    @ray.method(concurrency_group="control")
    def stop(self, reason: str) -> None:
        """Called by the driver on another thread: stop the shard in progress as the circuit
        breaker does, and take no new one."""
        self.stopped = reason
        current = self.current
        if current is not None:
            current.request_stop(reason)

    def __del__(self):
        for stage in getattr(self, "stages", []):
            try:
                stage.teardown()
            except Exception:
                pass
