"""`capmill report OUT [-o FILE]`: a static HTML page of a run output."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write a static HTML page of a run output (samples, scores, drops, eval)")
    p.add_argument("out", help="a capmill output directory")
    p.add_argument("-o", "--output", help="where to write the page (default OUT/report.html)")
    p.add_argument("--max-samples", type=int, default=1000, help="samples shown in the grid (default 1000)")
    p.add_argument("--thumb-size", type=int, default=128, help="thumbnail side in pixels (default 128)")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from capmill.report import build_report

    path = build_report(args.out, args.output, max_samples=args.max_samples, thumb_size=args.thumb_size)
    print(f"report written to {path} (open it in a browser; no server needed)")
    return 0
