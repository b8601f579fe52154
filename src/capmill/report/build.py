"""`capmill report OUT`: one self-contained HTML page about a run output.

The page holds everything inline (data as JSON, thumbnails as data: URIs, script and style), so
it opens from the file system with no server and can be mailed or archived as one file. It shows
the models by id, the status counts and drop reasons summed over `_stats`, every evaluation kept
in OUT/_eval.json, a histogram per score key with labelled axes ("clip:dsc" is the CLIP score of
the dsc field), a side-by-side view of two caption fields with their scores, and a grid of
samples (thumbnail, AltText, every caption with its scores, status) filtered by status and by a
text search over key, AltText and captions, sorted by key or any score in either order, and
the output guards' counts (rejected texts by caption key and reason) summed over `_stats`.
Under each caption, what its evaluation figures rest on, from the per-sample details kept beside
the eval history (the newest evaluation that has them, per field and metric): the scene-graph
elements CAPTURE found and those the references matched, the facts with their verdicts, the
objects CHAIR and OpenCHAIR counted as hallucinated, the arena's order and verdict.
Dropped samples come from `_rejects/` when the run wrote them, with their thumbnails.

All text from the data is inserted with textContent by the script, never as HTML.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
from collections import Counter
from importlib import resources
from typing import Any

from capmill.errors import ConfigError
from capmill.eval import history
from capmill.outputdir import REJECTS_DIR, OutputDir
from capmill.sample import AUDIO, VIDEO, ImageRef, Sample

REPORT_FILE = "report.html"
_HUB_CACHE = re.compile(r"models--([^/]+?)--([^/]+)/snapshots/")


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


def frame_strip(sample: Sample, size: int, most: int = 6) -> str | None:
    """A video's sampled frames side by side (the times its record holds, at most `most` of
    them, evenly chosen; uniform ones when none are recorded), as a JPEG data URI; None when the
    video cannot be decoded."""
    from PIL import Image

    from capmill.errors import SampleError
    from capmill.media.sampling import SamplingConfig, thin
    from capmill.media.video import VideoConfig, decode_video, frames_at

    ref = sample.media
    if not ref.data:
        return None
    config = VideoConfig(max_side=size, sampling=SamplingConfig(frames=most))
    try:
        times = thin(ref.times, most)
        frames = frames_at(ref, times, config) if times else decode_video(ref, config)[0]
    except (SampleError, OSError, ValueError):
        return None
    height = max(16, size * 3 // 4)
    tiles = [f.image.resize((max(1, round(f.image.width * height / f.image.height)), height)) for f in frames]
    strip = Image.new("RGB", (sum(t.width for t in tiles) + 2 * (len(tiles) - 1), height), (255, 255, 255))
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + 2
    buf = io.BytesIO()
    strip.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def spectrogram(sample: Sample, size: int) -> str | None:
    """An audio sample's log-magnitude spectrogram (time left to right, low frequencies at the
    bottom, up to 8 kHz), as a JPEG data URI the size of a frame strip; None when the audio
    cannot be decoded."""
    import numpy as np
    from PIL import Image

    from capmill.errors import SampleError
    from capmill.media.audio import AudioConfig, decode_audio

    if not sample.media.data:
        return None
    try:
        wave, _ = decode_audio(sample.media, AudioConfig(rate=16000))
    except (SampleError, OSError, ValueError):
        return None
    window, hop = 512, max(1, len(wave.samples) // (size * 2) or 1)
    starts = range(0, max(1, len(wave.samples) - window), max(hop, 64))
    frames = np.stack([np.pad(wave.samples[i:i + window], (0, max(0, window - len(wave.samples[i:i + window]))))
                       for i in starts]) * np.hanning(window)
    power = 20 * np.log10(np.abs(np.fft.rfft(frames, axis=1)) + 1e-6)
    scaled = np.clip((power - (power.max() - 80)) / 80, 0, 1)  # the top 80 dB
    image = Image.fromarray((255 * scaled.T[::-1]).astype(np.uint8), "L").resize((size * 2, max(16, size * 3 // 4)))
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
        # What the stage recorded about each caption (what it kept and dropped and why, its
        # fallback, the guards' verdicts), bounded so that a long record keeps the page small.
        "meta": {name: bounded(c.meta) for name, c in sample.captions.items() if c.meta},
        # NaN has no JSON form; the page shows a missing score as "–".
        "scores": {k: _finite(v) for k, v in sample.scores.items()},
        "thumb": thumb,
    }


def bounded(value: Any, depth: int = 0, items: int = 24, chars: int = 300) -> Any:
    """A copy of a caption's meta the page can hold: strings cut at `chars`, lists and mappings
    at `items` entries (the rest counted), nesting at five levels, non-finite numbers as None."""
    if isinstance(value, str):
        return value if len(value) <= chars else value[:chars] + "…"
    if isinstance(value, float):
        return _finite(value)
    if value is None or isinstance(value, (bool, int)):
        return value
    if depth >= 5:
        return "…"
    if isinstance(value, dict):
        out = {str(k): bounded(v, depth + 1, items, chars) for k, v in list(value.items())[:items]}
        if len(value) > items:
            out["…"] = f"{len(value) - items} more"
        return out
    if isinstance(value, (list, tuple)):
        out = [bounded(v, depth + 1, items, chars) for v in list(value)[:items]]
        return out + ([f"… {len(value) - items} more"] if len(value) > items else [])
    return bounded(str(value), depth, items, chars)


def model_label(model: str) -> str:
    """What a reader calls the model: the hub id, not where it is installed. A hub cache
    snapshot gives its owner/name; another local path its folder name."""
    found = _HUB_CACHE.search(model)
    if found:
        return f"{found.group(1)}/{found.group(2)}"
    if model.startswith(("/", "./", "../", "~")) or os.sep in model and os.path.exists(model):
        return os.path.basename(os.path.normpath(os.path.expanduser(model))) or model
    return model


def _rejects(out_dir: str) -> list[Sample]:
    """Dropped samples, with their image bytes when the rejects file has them (on a file system
    or an object store)."""
    from capmill.writers.store import store_for

    store = store_for(out_dir)
    folder = os.path.join(out_dir, REJECTS_DIR)
    if not store.isdir(folder):
        return []
    import pyarrow.parquet as pq

    samples = []
    for name in sorted(store.listdir(folder)):
        if name.endswith(".parquet") and not name.startswith("."):
            with store.open(os.path.join(folder, name), "rb") as f:
                parquet = pq.ParquetFile(f)
                columns = ["record"] + (["image"] if "image" in parquet.schema_arrow.names else [])
                table = parquet.read(columns=columns).to_pydict()
            for i, text in enumerate(table["record"]):
                sample = Sample.from_json(text)
                image = table.get("image", [None] * len(table["record"]))[i]
                if image and image.get("bytes"):
                    sample.image = ImageRef(data=image["bytes"], path=sample.image.path, url=sample.image.url,
                                            ext=sample.image.ext)
                samples.append(sample)
    return samples


def sample_details(out_dir: str, entries: list[dict[str, Any]], keys: set[str]) -> dict[str, dict[str, Any]]:
    """key → field → metric family → detail for `keys`, newer evaluations over older ones."""
    merged: dict[str, dict[str, Any]] = {}
    for entry in entries:  # oldest first
        for key, fields in history.load_details(out_dir, entry).items():
            if key not in keys or not isinstance(fields, dict):
                continue
            for name, families in fields.items():
                if isinstance(families, dict):
                    merged.setdefault(key, {}).setdefault(name, {}).update(families)
    return merged


def _evaluations(out_dir: str, config_hash: str | None) -> list[dict[str, Any]]:
    entries = []
    for entry in history.load(out_dir):
        run_hash = entry.get("run_config_hash")
        entries.append({**entry, "stale": bool(run_hash and config_hash and run_hash != config_hash)})
    return entries


def collect(out_dir: str, max_samples: int = 1000, thumb_size: int = 128) -> dict[str, Any]:
    """Everything the page shows, as one JSON-ready dict."""
    from capmill.readers.run_output import RunOutputInput

    out = OutputDir(out_dir)
    run = out.read_run()
    if run is None:
        raise ConfigError(f"{out_dir!r} is not a capmill output directory (no _run.json)")
    reader = RunOutputInput(path=out_dir).build()
    records, statuses, total = [], Counter(), 0
    fields: dict[str, None] = {"alt_text": None}
    for sample in _all_samples(reader, out_dir):
        total += 1
        statuses[sample.status] += 1
        fields.update(dict.fromkeys(sample.captions))
        if len(records) < max_samples:
            if sample.media.kind == VIDEO:  # a strip of the frames the run sampled
                records.append({**_record(sample, frame_strip(sample, thumb_size)), "strip": True})
            elif sample.media.kind == AUDIO:  # what it sounds like, as a picture
                records.append({**_record(sample, spectrogram(sample, thumb_size)), "strip": True})
            else:
                records.append(_record(sample, thumbnail(sample.image.data, thumb_size)))
    drops: Counter = Counter()
    guards: Counter = Counter()
    for stats in out.all_stats():
        drops.update(stats.get("drops", {}))
        for key, tally in (stats.get("captions") or {}).items():
            guards.update({f"{key}: {reason}": n for reason, n in (tally.get("guards") or {}).items()})
    models = {stage: [{"id": model_label(m), "source": m} for m in ids] for stage, ids in (run.get("models") or {}).items()}
    evaluations = _evaluations(out_dir, run.get("config_hash"))
    details = sample_details(out_dir, evaluations, {r["key"] for r in records})
    for record in records:
        if record["key"] in details:
            record["eval"] = details[record["key"]]
    return {
        "title": os.path.basename(os.path.abspath(out_dir)),
        "created": run.get("created"),
        "config_hash": run.get("config_hash"),
        "models": models,
        "total": total,
        "shown": len(records),
        "statuses": dict(statuses),
        "drops": dict(drops.most_common()),
        "fields": list(fields),
        "evaluations": [{k: v for k, v in e.items() if k != "details"} for e in evaluations],
        "guards": dict(sorted(guards.items(), key=lambda kv: (-kv[1], kv[0]))),
        "samples": records,
    }


def _all_samples(reader, out_dir: str):
    for shard in reader.shards():
        yield from reader.read(shard)
    yield from _rejects(out_dir)


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
