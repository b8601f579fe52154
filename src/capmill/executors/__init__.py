from capmill.executors.local import LocalExecutor, LocalExecutorConfig
from capmill.executors.ray import RayExecutor, RayExecutorConfig

__all__ = ["LocalExecutor", "LocalExecutorConfig", "RayExecutor", "RayExecutorConfig"]
