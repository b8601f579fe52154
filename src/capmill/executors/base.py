"""What `capmill run` hands an executor: one `RunJob`, and the three calls every executor has.

    setup(run, ctx)  build the stages and load their models (heavy; before the output is claimed)
    run(job)         process job.tasks; call job.claim() once every stage is set up, before
                     writing anything, and write through the committer it returns
    close()          tear the stages down
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from capmill.commit import ShardCommitter, ShardTask
    from capmill.commit.claims import ShardClaims
    from capmill.config import RunConfig
    from capmill.outputdir import OutputDir
    from capmill.progress import Progress, RunSummary
    from capmill.readers.base import Reader
    from capmill.stages.base import RunContext


@dataclass
class RunJob:
    config: RunConfig
    reader: Reader
    tasks: list[ShardTask]
    out: OutputDir
    summary: RunSummary
    progress: Progress
    # Takes the output directory's lock and writes `_run.json`; returns the shard committer.
    # Nothing is claimed before the stages are set up, so a setup failure leaves the directory
    # as it was.
    claim: Callable[[], ShardCommitter]
    # Cooperating runs (`capmill run --cooperate`): a shard is processed only after
    # `claims.take(task)` says this run holds its claim; `claims.release(name)` once it is
    # committed or given up. None: this run holds the output alone.
    claims: ShardClaims | None = None


class Executor(Protocol):
    def setup(self, run: RunConfig, ctx: RunContext) -> None: ...

    def run(self, job: RunJob) -> RunSummary: ...

    def close(self) -> None: ...
