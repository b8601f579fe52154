"""`capmill inspect PATH`: count the samples of any input or output and show a few records."""

from __future__ import annotations

import argparse
import json
from collections import Counter


def add_parser(sub) -> None:
    from capmill.readers.guess import KINDS

    p = sub.add_parser("inspect", help="count samples and show a few records of an input or output")
    p.add_argument("path", help="a capmill output directory, tar shard(s) or parquet file(s) or a folder of them, a jsonl manifest, a saved Hugging Face dataset or an image folder")
    p.add_argument("-n", "--show", type=int, default=3, help="records to print (default 3)")
    p.add_argument("--type", choices=KINDS, default=None,
                   help="input type, when it cannot be guessed from the path")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from capmill.readers.guess import input_for

    config = input_for(args.path, args.type)
    reader = config.build()
    shards = reader.shards()
    statuses: Counter = Counter()
    captions: Counter = Counter()
    shown = 0
    for shard in shards:
        for sample in reader.read(shard):
            statuses[sample.status] += 1
            captions.update(sample.captions.keys())
            if shown < args.show:
                record = sample.to_dict()
                media = record["image" if "image" in record else "media"]  # videos are written as "media"
                media["bytes"] = len(sample.image.data) if sample.image.data is not None else None
                print(json.dumps(record, ensure_ascii=False, indent=2, default=str))
                shown += 1
    total = sum(statuses.values())
    print(f"{total} samples in {len(shards)} shard(s) ({config.type})")
    for status, n in statuses.most_common():
        print(f"  status {status}: {n}")
    for name, n in captions.most_common():
        print(f"  caption {name}: {n}")
    return 0
