"""Test data and test doubles for capmill and for anyone writing their own stages."""

from capmill.testing.shards import (
    PHOTOS,
    Item,
    corrupt_items,
    generated,
    hostile_images,
    items,
    photo,
    write_folder,
    write_jsonl,
    write_parquet,
    write_tar,
    write_webdataset,
)

__all__ = [
    "PHOTOS", "Item", "corrupt_items", "generated", "hostile_images", "items", "photo", "write_folder",
    "write_jsonl", "write_parquet", "write_tar", "write_webdataset",
]
