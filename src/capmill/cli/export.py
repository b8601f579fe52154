"""`capmill export RUN_OUT --target clip|mllm|diffusion|dreamlip|llava_video|grounding --out DIR`: training data from a run."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a run's captions in the layout a trainer reads (CLIP, MLLM, diffusion, DreamLIP)")
    p.add_argument("run_out", help="a capmill output directory")
    p.add_argument("--target", choices=["clip", "mllm", "diffusion", "dreamlip", "llava_video", "grounding", "clap"],
                   help="clip: webdataset with a seeded AltText/synthetic mix; mllm: LLaVA JSON; "
                        "diffusion: parquet or sidecar .txt (kohya folders); dreamlip: sentence pools + AltText; "
                        "llava_video: LLaVA JSON with video paths; grounding: region captions with normalised boxes; "
                        "clap: audio + caption webdataset for audio-text contrastive training")
    p.add_argument("--recipe", metavar="NAME",
                   help="an export recipe fixing a published method's target and mix (capmill recipes list), e.g. tldr")
    p.add_argument("--out", required=True, help="folder to write (one export per folder; rerun to resume)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-sample draws (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an export setting, e.g. --set mix.p_synthetic=0.4, "
                        "--set 'mix.synthetic=[dsc]', --set diffusion_format=sidecar --set repeats=10 (repeatable)")
    p.add_argument("--force", action="store_true", help="replace another export found in --out")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from capmill.cli.main import EXIT_FAILED, EXIT_OK
    from capmill.export import export_config, export_run, load_export_recipe

    recipe = load_export_recipe(args.recipe) if args.recipe else None
    config = export_config(args.target, args.seed, args.overrides, recipe=recipe)
    report = export_run(args.run_out, config, args.out, force=args.force)
    print(report.render())
    if report.written == 0 and report.skipped.get("no_image"):
        print("no sample had its image: export reads images from the run's tar shards; "
              "run with output.writers including webdataset")
    return EXIT_FAILED if report.degenerate else EXIT_OK
