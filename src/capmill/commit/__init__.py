"""The output directory's safety: the run lock, the shard commit protocol, commit records and
the resume plan. Every executor (and anything else that writes shards) goes through here."""

from capmill.commit.lock import Lease, RunLock
from capmill.commit.plan import RunPlan, ShardTask, plan_run
from capmill.commit.policy import ReliabilityConfig
from capmill.commit.shard import KeyRegistry, ShardCommitter, ShardState
from capmill.commit.stats import ShardStats

__all__ = ["KeyRegistry", "Lease", "ReliabilityConfig", "RunLock", "RunPlan", "ShardCommitter", "ShardState",
           "ShardStats", "ShardTask", "plan_run"]
