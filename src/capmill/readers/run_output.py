"""A capmill output directory read back as input: records with their captions and scores.

Lets one run build on another (caption once, then fuse, score or filter in later runs), and is
what `inspect`, `eval`, `export` and `report` read. Tar outputs give the images back too;
parquet-only outputs give the records without images.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from typing import Literal

from capmill.errors import ConfigError
from capmill.outputdir import OutputDir
from capmill.readers.base import InputConfig, Reader, Shard
from capmill.readers.webdataset import split_member
from capmill.sample import Sample


class RunOutputInput(InputConfig):
    type: Literal["capmill"] = "capmill"
    path: str
    # Skip samples whose status is not ok (failed or dropped in the earlier run).
    only_ok: bool = False

    def build(self) -> RunOutputReader:
        return RunOutputReader(self)


class RunOutputReader(Reader):
    config: RunOutputInput

    @property
    def out(self) -> OutputDir:
        """The output read (a local folder or an object store URL, with `storage_options`)."""
        return OutputDir(self.config.path, self.config.storage_options)

    def shards(self) -> list[Shard]:
        out = self.out
        if out.read_run() is None:
            raise ConfigError(f"{self.config.path!r} is not a capmill output directory (no _run.json)")
        shards = []
        for stats in out.all_stats():
            outputs = stats.get("outputs", [])
            name = stats["shard"]
            if f"{name}.tar" in outputs:
                shards.append(Shard(name, out.join(f"{name}.tar"), len(shards), spec="tar"))
            elif f"{name}.parquet" in outputs:
                shards.append(Shard(name, out.join(f"{name}.parquet"), len(shards), spec="parquet"))
        return shards

    def read_shard(self, shard: Shard) -> Iterator[Sample]:
        samples = self._from_tar(shard) if shard.spec == "tar" else self._from_parquet(shard)
        for sample in samples:
            if self.config.only_ok and not sample.ok:
                continue
            yield sample

    def _from_parquet(self, shard: Shard) -> Iterator[Sample]:
        import pyarrow.parquet as pq

        with self.out.store.open(shard.source, "rb") as f:
            pf = pq.ParquetFile(f)
            for batch in pf.iter_batches(columns=["record"]):
                for text in batch.column("record").to_pylist():
                    yield Sample.from_json(text)

    def _from_tar(self, shard: Shard) -> Iterator[Sample]:
        with self.out.store.open(shard.source, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            key, members = None, {}
            for info in tar:
                k, ext = split_member(info.name)
                if k != key and key is not None:
                    yield _record(members)
                    members = {}
                key = k
                members[ext] = tar.extractfile(info).read()
            if key is not None:
                yield _record(members)


def _record(members: dict[str, bytes]) -> Sample:
    sample = Sample.from_dict(json.loads(members.pop("json")))
    members.pop("txt", None)
    if members:
        # The stored media member; the record's reference keeps its kind, clip window and
        # sampled frame times.
        ext, data = next(iter(members.items()))
        # The stored media member. The tar may store every image under one member name
        # (output.image_ext); the record keeps the format the bytes really are, and its
        # reference keeps the kind, clip window and sampled frame times.
        sample.image.data = data
        sample.image.ext = sample.image.ext or ext
    return sample
