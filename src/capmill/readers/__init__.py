from capmill.readers.base import InputConfig, Reader, Shard
from capmill.readers.folder import FolderInput, FolderReader
from capmill.readers.hf import HfInput, HfReader
from capmill.readers.jsonl import JsonlInput, JsonlReader
from capmill.readers.parquet import ParquetInput, ParquetReader
from capmill.readers.run_output import RunOutputInput, RunOutputReader
from capmill.readers.webdataset import WebDatasetInput, WebDatasetReader

__all__ = [
    "FolderInput", "FolderReader", "HfInput", "HfReader", "InputConfig", "JsonlInput", "JsonlReader", "ParquetInput",
    "ParquetReader", "Reader", "RunOutputInput", "RunOutputReader", "Shard", "WebDatasetInput", "WebDatasetReader",
]
