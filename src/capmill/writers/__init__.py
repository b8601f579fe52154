from capmill.writers.base import ShardWriter
from capmill.writers.output import OutputConfig, open_rejects, open_writers
from capmill.writers.parquet import ParquetWriter
from capmill.writers.sidecar import SidecarWriter
from capmill.writers.webdataset import WebDatasetWriter

__all__ = ["OutputConfig", "ParquetWriter", "ShardWriter", "SidecarWriter", "WebDatasetWriter", "open_rejects", "open_writers"]
