"""`capmill eval PATH --fields alt_text,dsc [--references refs.json] [--json out.json] [--compare A B]`."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from capmill.eval.history import EVAL_FILE


def add_parser(sub) -> None:
    from capmill.readers.guess import KINDS

    p = sub.add_parser("eval", help="measure caption quality: CLIPScore, self-retrieval, COCO metrics, lengths")
    p.add_argument("path", help="a capmill output directory, or tar/parquet/jsonl captions (a file, a glob, or a folder of them)")
    p.add_argument("--fields", default="alt_text", help="comma-separated caption fields (default alt_text)")
    p.add_argument("--references", help="COCO-style JSON ({annotations: [{image_id: KEY, caption}]}) keyed by sample key")
    p.add_argument("--json", dest="json_out", help="write field → metric → value here "
                   f"(a capmill output directory also keeps every evaluation in OUT/{EVAL_FILE}, which "
                   "`capmill report` shows)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate only the first N ok samples")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="two fields of PATH, or two paths (then --fields are evaluated in both), side by side")
    p.add_argument("--scorer", help="ImageTextScorer backend as YAML, e.g. '{type: clip, model: /models/clip-b32}' "
                   "(default CLIP ViT-B/32, as CLIPScore is defined)")
    p.add_argument("--bags", default="99", help="distractors per retrieval bag, comma-separated (99 = RD100; '' for none)")
    p.add_argument("--skip", default="", help="metric groups to skip: text, clip, retrieval, coco, vdc (comma-separated)")
    p.add_argument("--clip-reference", action="store_true", help="clip the text-reference cosine of RefCLIPScore at 0")
    p.add_argument("--seed", type=int, default=0, help="seed of the retrieval bags")
    p.add_argument("--judge", help="LanguageModel backend as YAML for VDCscore (needs --references), e.g. "
                   "'{type: transformers, model: Qwen/Qwen2.5-1.5B-Instruct}'")
    p.add_argument("--vdc-questions", type=int, default=10, help="VDCscore question-answer pairs per reference (default 10)")
    p.add_argument("--type", choices=KINDS, help="input type, when not guessable")
    p.set_defaults(handler=main)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_config(args: argparse.Namespace, fields: list[str]):
    import yaml
    from pydantic import ValidationError

    from capmill.config import format_validation_error
    from capmill.errors import ConfigError
    from capmill.eval import EvalConfig

    raw = {"fields": fields, "bags": [int(b) for b in _split(args.bags)], "skip": _split(args.skip),
           "clip_reference": args.clip_reference, "seed": args.seed}
    if args.scorer:
        try:
            raw["scorer"] = yaml.safe_load(args.scorer)
        except yaml.YAMLError as e:
            raise ConfigError(f"--scorer is not valid YAML: {e}") from None
    if getattr(args, "judge", None):
        try:
            raw["vdc"] = {"judge": yaml.safe_load(args.judge), "questions": args.vdc_questions}
        except yaml.YAMLError as e:
            raise ConfigError(f"--judge is not valid YAML: {e}") from None
    try:
        return EvalConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def main(args: argparse.Namespace) -> int:
    from capmill.api.evaluate import evaluate_paths
    from capmill.cli.main import EXIT_FAILED, EXIT_OK
    from capmill.eval.table import render

    fields = _split(args.fields)
    paths = [args.path]
    if args.compare:
        a, b = args.compare
        if os.path.exists(a) and os.path.exists(b):
            paths = [a, b]
        else:
            fields = [a, b]
    config = build_config(args, fields)
    results = evaluate_paths(paths, config, args.references, kind=args.type, limit=args.limit)
    for path, result in results.items():
        for note in result.notes:
            print(f"capmill eval: {path}: {note}", file=sys.stderr)
    if len(paths) == 2:
        columns = {f"{os.path.basename(p.rstrip('/'))}:{f}": results[p].metrics[f] for f in fields for p in paths}
        payload = {p: results[p].to_json() for p in paths}
    else:
        columns = results[args.path].metrics
        payload = results[args.path].to_json()
    print(render(columns))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, ensure_ascii=False, allow_nan=False)
            f.write("\n")
    empty = all(not any(not (isinstance(v, float) and math.isnan(v)) for v in m.values())
                for r in results.values() for m in r.metrics.values())
    return EXIT_FAILED if empty else EXIT_OK
