"""`capmill export RUN_OUT --target clip|mllm|diffusion|dreamlip --out DIR`: training data from a run."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a run's captions in the layout a trainer reads (CLIP, MLLM, diffusion, DreamLIP)")
    p.add_argument("run_out", help="a capmill output directory")
    p.add_argument("--target", required=True, choices=["clip", "mllm", "diffusion", "dreamlip", "llava_video"],
                   help="clip: webdataset with a seeded AltText/synthetic mix; mllm: LLaVA JSON; "
                        "diffusion: parquet or sidecar .txt; dreamlip: sentence sub-captions + AltText; "
                        "llava_video: LLaVA JSON with video paths")
    p.add_argument("--out", required=True, help="folder to write (must differ from RUN_OUT)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-sample draws (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an export setting, e.g. --set mix.p_synthetic=0.4, "
                        "--set 'mix.synthetic=[dsc]', --set diffusion_format=sidecar (repeatable)")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from capmill.cli.main import EXIT_FAILED, EXIT_OK
    from capmill.export import export_config, export_run

    config = export_config(args.target, args.seed, args.overrides)
    report = export_run(args.run_out, config, args.out)
    print(report.render())
    if report.written == 0 and report.skipped.get("no_image"):
        print("no sample had its image: export reads images from the run's tar shards; "
              "run with output.writers including webdataset")
    return EXIT_OK if report.written or not report.samples else EXIT_FAILED
