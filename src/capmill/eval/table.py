"""Terminal tables of eval results: one column per field (or per run), one row per metric."""

from __future__ import annotations

import math

# Rows in this order first; any other metric follows alphabetically.
ORDER = ["win_rate", "win_rate_ci_low", "win_rate_ci_high", "arena words (mean)", "arena judged", "arena wins",
         "arena ties", "arena losses", "arena unparsed",
         "CLIPScore", "RefCLIPScore", "CLAPScore", "RefCLAPScore", "CLIP-Image-Score", "R@1", "R@5", "R@10", "TrueMatch_R@1_bag3",
         "TrueMatch_R@1_bag5", "TrueMatch_R@1_bag7", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4",
         "METEOR", "ROUGE-L", "CIDEr", "SPICE", "SPIDEr-max", "CAPTURE", "CAPTURE_object_F1", "CAPTURE_attribute_F1",
         "CAPTURE_relation_F1", "fact_precision", "fact_recall", "fact_F1", "facts (mean)", "CHAIRi", "CHAIRs",
         "OpenCHAIR", "OpenCHAIR objects", "VDCscore", "VDC accuracy", "VDC questions",
         "words (mean)", "CLIP tokens (mean)", "over 77 CLIP tokens", "facts_per_caption", "vocabulary",
         "distinct-1", "distinct-2", "template collapse", "captions", "empty"]


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return str(int(value))
    return f"{value:.4f}"


def _rank(metric: str, rank: dict[str, int]) -> float:
    if metric.startswith("RD") and " " in metric:  # "RD100 R@1": right after the whole-set R@k
        return rank["R@10"] + 0.5
    return rank.get(metric, len(ORDER))


def render(columns: dict[str, dict[str, float]]) -> str:
    """columns: header → metric → value."""
    metrics: list[str] = []
    for values in columns.values():
        metrics.extend(m for m in values if m not in metrics)
    rank = {m: i for i, m in enumerate(ORDER)}
    metrics.sort(key=lambda m: (_rank(m, rank), m))
    headers = ["metric", *columns]
    rows = [[m, *(_fmt(columns[c].get(m)) for c in columns)] for m in metrics]
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])
