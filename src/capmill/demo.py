"""`make demo`: the quickstart end to end on sample photos (`python -m capmill.demo [DIR]`)."""

from __future__ import annotations

import os
import sys

from capmill.config import parse_config
from capmill.run import run
from capmill.testing.shards import write_webdataset


def main(workdir: str = "demo") -> int:
    data = os.path.join(workdir, "data")
    if not os.path.isdir(data):
        write_webdataset(data, shards=3, per_shard=8)
    config = parse_config({
        "input": {"type": "webdataset", "path": f"{data}/{{00000..00002}}.tar"},
        "output": {"path": os.path.join(workdir, "out"), "writers": ["webdataset", "parquet"]},
        "executor": {"type": "local", "batch_size": 8},
        "stages": [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc", "dsc"]}],
    })
    print("capmill demo: captioning with the fake backend (a deterministic test double; its captions are meaningless)")
    summary = run(config, force=True)
    print(summary.render())
    print(f"\noutput in {config.output.path}; look at it with: capmill inspect {config.output.path}")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
