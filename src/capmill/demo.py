"""`make demo`: the quickstart end to end on sample photos.

    python -m capmill.demo [DIR] [MODEL]

Captions the sample shards with the real default model (a small VLM that runs on a CPU), or
MODEL (a hub id or local folder). Where that model cannot be had (offline, as on a machine
without hub access) it says so in one line and runs the same pipeline on the tiny random test
models instead, so the whole flow — run, output, inspect — is still shown.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from capmill.config import parse_config
from capmill.errors import SetupError
from capmill.run import run
from capmill.testing.shards import write_webdataset
from capmill.testing.smoke import SMOKE_RELIABILITY

DEFAULT_MODEL = "HuggingFaceTB/SmolVLM-256M-Instruct"
# The tiny stand-in is the same family as the default (SmolVLM is an Idefics3 model).
TINY_FAMILY = "idefics3"


def pick_model(model: str, workdir: str) -> tuple[str, bool]:
    """`model` as a local path, or the tiny stand-in after one line saying why and what to do;
    and whether it is the stand-in."""
    from capmill.backends.availability import resolve_model
    from capmill.testing.tiny_models import cached_tiny_models

    try:
        return resolve_model(model), False
    except SetupError as e:
        local = f"models/{model.rsplit('/', 1)[-1]}"
        print(f"capmill demo: {e}; then run the demo on it with `python -m capmill.demo demo {local}`")
    tiny = cached_tiny_models(Path(workdir) / "tiny_models") / TINY_FAMILY
    banner = "TINY RANDOM TEST MODEL: the captions below are meaningless; they show the flow, not a model"
    print(f"\n{'=' * len(banner)}\n{banner}\n{'=' * len(banner)}\n")
    return str(tiny), True


def main(workdir: str = "demo", model: str = DEFAULT_MODEL) -> int:
    data = os.path.join(workdir, "data")
    if not os.path.isdir(data):
        write_webdataset(data, shards=3, per_shard=8)
    path, tiny = pick_model(model, workdir)
    out = os.path.join(workdir, "out")
    config = parse_config({
        # Random weights write text the output guards reject, so every caption falls back: the
        # degenerate-result check is off for the stand-in (as for `--models`), never for a model.
        **({"reliability": SMOKE_RELIABILITY} if tiny else {}),
        "input": {"type": "webdataset", "path": f"{data}/{{00000..00002}}.tar"},
        "output": {"path": out, "writers": ["webdataset", "parquet"]},
        "executor": {"type": "local", "batch_size": 8},
        "stages": [{"type": "caption", "formats": ["ssc", "dsc"],
                    "backend": {"type": "transformers", "model": path, "params": {"max_new_tokens": 60}}}],
    })
    print(f"capmill demo: captioning {data} with {path}")
    summary = run(config, force=True)
    print(summary.render())
    from capmill.cli.main import main as cli

    print(f"\n$ capmill inspect {out} -n 2")
    cli(["inspect", out, "-n", "2"])
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
