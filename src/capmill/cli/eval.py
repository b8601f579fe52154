"""`capmill eval PATH --fields alt_text,dsc [--references refs.json] [--instances instances.json]
[--json out.json] [--compare A B [--judge YAML]]`."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from capmill.eval.history import EVAL_FILE


def add_parser(sub) -> None:
    from capmill.readers.guess import KINDS

    p = sub.add_parser("eval", help="measure caption quality: CLIPScore, self-retrieval, COCO metrics, CAPTURE, CHAIR, "
                       "facts, a pairwise arena, lengths")
    p.add_argument("path", help="a capmill output directory, or tar/parquet/jsonl captions (a file, a glob, or a folder of them)")
    p.add_argument("--fields", default="alt_text", help="comma-separated caption fields (default alt_text)")
    p.add_argument("--references", help="COCO-style JSON ({annotations: [{image_id: KEY, caption}]}) keyed by sample key")
    p.add_argument("--instances", help="COCO instances JSON (images[].id and annotations[].image_id are sample keys) "
                   "for CHAIR-i / CHAIR-s")
    p.add_argument("--json", dest="json_out", help="write field → metric → value here "
                   f"(a capmill output directory also keeps every evaluation in OUT/{EVAL_FILE}, which "
                   "`capmill report` shows)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate only the first N ok samples")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="two fields of PATH, or two paths (then --fields are evaluated in both), side by side; "
                   "with --judge a vision-language judge also picks the better caption of each sample (win rate)")
    p.add_argument("--scorer", help="ImageTextScorer backend as YAML, e.g. '{type: clip, model: /models/clip-b32}' "
                   "(default CLIP ViT-B/32, as CLIPScore is defined)")
    p.add_argument("--bags", default="99", help="distractors per retrieval bag, comma-separated (99 = RD100; '' for none)")
    p.add_argument("--truematch", default="3,5,7", help="TrueMatch bag sizes, comma-separated ('' for none)")
    p.add_argument("--skip", default="", help="metric groups to skip (comma-separated): text, richness, clip, retrieval, "
                   "truematch, coco, capture, chair, openchair, facts, image_score, arena, vdc")
    p.add_argument("--clip-reference", action="store_true", help="clip the text-reference cosine of RefCLIPScore at 0")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the retrieval and TrueMatch bags, the arena's order and the text-to-image draws")
    p.add_argument("--judge", help="the judge as backend YAML: a LanguageModel for OpenCHAIR, fact lists and VDCscore "
                   "(with --references), a VisionLanguageModel for the --compare arena, e.g. "
                   "'{type: openai, model: Qwen/Qwen2.5-VL-7B-Instruct, base_url: http://localhost:8000/v1}'")
    p.add_argument("--verifier", help="AskingVisionLanguageModel as YAML that checks each fact against the image "
                   "(fact precision), e.g. '{type: transformers, model: HuggingFaceTB/SmolVLM-256M-Instruct}'")
    p.add_argument("--nli", help="NLI backend as YAML that checks facts against the references (fact recall), "
                   "e.g. '{type: nli, model: FacebookAI/roberta-large-mnli}'")
    p.add_argument("--parser", help="SceneGraphParser as YAML for CAPTURE and facts_per_caption (default: "
                   "'{type: spacy_scene_graph}', offline; the published parser: '{type: factual_t5}')")
    p.add_argument("--embedder", help="TextEmbedder as YAML for CAPTURE's soft matching (default all-MiniLM-L6-v2)")
    p.add_argument("--t2i", help="TextToImage backend as YAML for CLIP-Image-Score, e.g. "
                   "'{type: diffusers, model: stabilityai/sdxl-turbo, steps: 1, guidance_scale: 0}'")
    p.add_argument("--vdc-questions", type=int, default=10, help="VDCscore question-answer pairs per reference (default 10)")
    p.add_argument("--type", choices=KINDS, help="input type, when not guessable")
    p.set_defaults(handler=main)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _ints(value: str, option: str) -> list[int]:
    from capmill.errors import ConfigError

    try:
        return [int(v) for v in _split(value)]
    except ValueError:
        raise ConfigError(f"--{option} takes comma-separated whole numbers, got {value!r}") from None


def build_config(args: argparse.Namespace, fields: list[str]):
    import yaml
    from pydantic import ValidationError

    from capmill.config import format_validation_error
    from capmill.errors import ConfigError
    from capmill.eval import EvalConfig

    raw = {"fields": fields, "bags": _ints(args.bags, "bags"), "skip": _split(args.skip),
           "clip_reference": args.clip_reference, "seed": args.seed}
    if getattr(args, "truematch", None) is not None:
        raw["truematch"] = _ints(args.truematch, "truematch")
    for name in ("scorer", "judge", "verifier", "nli", "parser", "embedder", "t2i"):
        value = getattr(args, name, None)
        if not value:
            continue
        try:
            raw[name] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--{name} is not valid YAML: {e}") from None
    if "judge" in raw:
        raw["vdc"] = {"judge": raw["judge"], "questions": args.vdc_questions}
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
    results = evaluate_paths(paths, config, args.references, kind=args.type, limit=args.limit,
                             instances=args.instances, compare=bool(args.compare))
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
