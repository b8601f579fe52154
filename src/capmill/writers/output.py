"""The output section of the config, and opening the writers it names for one shard."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from capmill.components import Strict
from capmill.writers.base import ShardWriter
from capmill.writers.parquet import ParquetWriter
from capmill.writers.sidecar import SidecarWriter
from capmill.writers.webdataset import WebDatasetWriter

WriterName = Literal["webdataset", "parquet", "sidecar"]


class OutputConfig(Strict):
    # A local directory, or an object store URL (s3://bucket/prefix, gs://bucket/prefix).
    path: str
    # fsspec options for an object store path (endpoint, credentials, region). Left out of the
    # config hash and of `_run.json` (they may hold credentials and do not change the records).
    storage_options: dict[str, Any] = Field(default_factory=dict, exclude=True)
    writers: list[WriterName] = Field(default_factory=lambda: ["webdataset", "parquet"], min_length=1)
    # The caption written as KEY.txt / sidecar .txt: "alt_text" or a caption name such as "dsc".
    # Samples without that caption fall back to their AltText.
    text_field: str = "alt_text"
    # Store the decoded, resized image re-encoded in this format instead of the original bytes.
    reencode: Literal["jpeg", "png", "webp"] | None = None
    reencode_quality: int = Field(90, ge=1, le=100)
    # Name of the image member in tar shards, the same for every sample so that a loader sees
    # one image field (Hugging Face's webdataset loader makes one column per extension). The
    # bytes keep their own format; loaders decode by content. "original": each sample's own
    # extension (a mixed-format output then has one image field per format). With `reencode`,
    # the re-encoded format's extension.
    image_ext: Literal["jpg", "png", "webp", "original"] = "jpg"
    # Also store the images in the parquet shards (an `image` column that Hugging Face
    # `datasets` decodes to PIL images), and audio samples' files (an `audio` column, its Audio
    # feature). Off by default: parquet shards stay small records.
    parquet_images: bool = False
    # Write samples that a filter dropped to OUT/_rejects/SHARD.parquet, with their images (so
    # the report can show them).
    rejects: bool = False


_WRITERS = {
    "webdataset": lambda c, out, shard: WebDatasetWriter(out, shard, c.text_field, c.reencode, c.reencode_quality,
                                                         c.image_ext, storage_options=c.storage_options),
    "parquet": lambda c, out, shard: ParquetWriter(out, shard, c.text_field, images=c.parquet_images,
                                                   storage_options=c.storage_options),
    "sidecar": lambda c, out, shard: SidecarWriter(out, shard, c.text_field, storage_options=c.storage_options),
}


def open_writers(config: OutputConfig, out_dir: str, shard: str) -> list[ShardWriter]:
    writers: list[ShardWriter] = []
    try:
        for name in config.writers:
            writers.append(_WRITERS[name](config, out_dir, shard))
    except BaseException:
        for w in writers:
            w.abort()
        raise
    return writers


def open_rejects(config: OutputConfig, out_dir: str, shard: str) -> ShardWriter | None:
    if not config.rejects:
        return None
    return ParquetWriter(out_dir, shard, config.text_field, subdir="_rejects", images=True,
                         storage_options=config.storage_options)
