from capmill.executors.local import LocalExecutor, LocalExecutorConfig

__all__ = ["LocalExecutor", "LocalExecutorConfig"]
