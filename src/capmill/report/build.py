"""`capmill report OUT`: one self-contained HTML page about a run output.

The page holds everything inline (data as JSON, thumbnails as data: URIs, script and style), so
it opens from the file system with no server and can be mailed or archived as one file. It shows
a grid of samples (thumbnail, AltText, every caption with its scores, status) that can be
filtered by status and sorted by any score, a histogram per score key ("clip:dsc" is the CLIP
score of the dsc field), the drop reasons and the output guards' counts (rejected texts by
caption key and reason) summed over `_stats`, and the `capmill eval` figures when
OUT/_eval.json exists. Dropped samples come from `_rejects/` when the run wrote them.

All text from the data is inserted with textContent by the script, never as HTML.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from collections import Counter
from importlib import resources
from typing import Any

from capmill.errors import ConfigError
from capmill.outputdir import REJECTS_DIR, OutputDir
from capmill.sample import Sample

REPORT_FILE = "report.html"
EVAL_FILE = "_eval.json"


def thumbnail(data: bytes | None, size: int) -> str | None:
    """A JPEG data URI no larger than size×size, or None when the image cannot be decoded."""
    if not data:
        return None
    from capmill.errors import SampleError
    from capmill.media.image import ImageConfig, decode_image

    try:
        image = decode_image(data, ImageConfig(max_side=max(size * 2, 64)))
    except SampleError:
        return None
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _finite(value: float) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _record(sample: Sample, thumb: str | None) -> dict[str, Any]:
    return {
        "key": sample.key,
        "status": sample.status,
        "error": sample.error,
        "alt_text": sample.alt_text,
        "captions": {name: c.text for name, c in sample.captions.items()},
        # NaN has no JSON form; the page shows a missing score as "–".
        "scores": {k: _finite(v) for k, v in sample.scores.items()},
        "thumb": thumb,
    }


def _rejects(out_dir: str) -> list[Sample]:
    folder = os.path.join(out_dir, REJECTS_DIR)
    if not os.path.isdir(folder):
        return []
    import pyarrow.parquet as pq

    samples = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".parquet") and not name.startswith("."):
            for text in pq.read_table(os.path.join(folder, name), columns=["record"]).column("record").to_pylist():
                samples.append(Sample.from_json(text))
    return samples


def collect(out_dir: str, max_samples: int = 1000, thumb_size: int = 128) -> dict[str, Any]:
    """Everything the page shows, as one JSON-ready dict."""
    from capmill.readers.run_output import RunOutputInput

    out = OutputDir(out_dir)
    run = out.read_run()
    if run is None:
        raise ConfigError(f"{out_dir!r} is not a capmill output directory (no _run.json)")
    reader = RunOutputInput(path=out_dir).build()
    records, statuses, total = [], Counter(), 0
    for shard in reader.shards():
        for sample in reader.read(shard):
            total += 1
            statuses[sample.status] += 1
            if len(records) < max_samples:
                records.append(_record(sample, thumbnail(sample.image.data, thumb_size)))
    for sample in _rejects(out_dir):
        total += 1
        statuses[sample.status] += 1
        if len(records) < max_samples:
            records.append(_record(sample, None))
    drops: Counter = Counter()
    guards: Counter = Counter()
    for stats in out.all_stats():
        drops.update(stats.get("drops", {}))
        for key, tally in (stats.get("captions") or {}).items():
            guards.update({f"{key}: {reason}": n for reason, n in (tally.get("guards") or {}).items()})
    eval_path = os.path.join(out_dir, EVAL_FILE)
    evaluation = None
    if os.path.exists(eval_path):
        with open(eval_path, encoding="utf-8") as f:
            evaluation = json.load(f)
    return {
        "title": os.path.basename(os.path.abspath(out_dir)),
        "created": run.get("created"),
        "config_hash": run.get("config_hash"),
        "models": run.get("models", {}),
        "total": total,
        "shown": len(records),
        "statuses": dict(statuses),
        "drops": dict(drops.most_common()),
        "guards": dict(sorted(guards.items(), key=lambda kv: (-kv[1], kv[0]))),
        "eval": evaluation,
        "samples": records,
    }


def render(data: dict[str, Any]) -> str:
    package = resources.files("capmill.report")
    template = (package / "template.html").read_text(encoding="utf-8")
    payload = json.dumps(data, ensure_ascii=False, allow_nan=False)
    # Inside <script>, "</" could close the element early; \u003c keeps the JSON identical.
    payload = payload.replace("<", "\\u003c")
    return (template.replace("/*STYLE*/", (package / "report.css").read_text(encoding="utf-8"))
                    .replace("/*SCRIPT*/", (package / "report.js").read_text(encoding="utf-8"))
                    .replace("/*DATA*/", payload))


def build_report(out_dir: str, dest: str | None = None, max_samples: int = 1000, thumb_size: int = 128) -> str:
    """Write the page (default OUT/report.html) and return its path."""
    dest = dest or os.path.join(out_dir, REPORT_FILE)
    html = render(collect(out_dir, max_samples=max_samples, thumb_size=thumb_size))
    tmp = f"{dest}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(html)
    os.replace(tmp, dest)
    return dest
