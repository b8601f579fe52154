"""`python -m capmill.testing.demo_data DIR`: three small tar shards of real photos for the quickstart."""

import sys

from capmill.testing.shards import write_webdataset

if __name__ == "__main__":
    for path in write_webdataset(sys.argv[1] if len(sys.argv) > 1 else "data", shards=3, per_shard=8):
        print(path)
