"""What `capmill eval` reads: the caption fields of a set of samples, and the references.

Any input capmill reads works (a run output, tar shards, parquet, jsonl). A field is looked up as
`alt_text`, then a caption of that name, then a string column / KEY.json key of that name, so a
plain parquet of captions evaluates without a capmill run. From a run output only `ok` samples
are evaluated; the others are counted by status.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from capmill.errors import ConfigError
from capmill.sample import Sample


@dataclass
class EvalSet:
    source: str
    keys: list[str] = field(default_factory=list)
    texts: dict[str, list[str | None]] = field(default_factory=dict)  # field → text per key (None: absent)
    candidates: dict[str, list[list[str]]] = field(default_factory=dict)  # field → candidate list per key
    images: list[bytes | None] = field(default_factory=list)  # the media's encoded bytes, of any kind
    kinds: list[str] = field(default_factory=list)  # the media kind of each sample ("image", "video", "audio")
    exts: list[str | None] = field(default_factory=list)  # the media's extension, where known
    excluded: Counter = field(default_factory=Counter)  # status → samples left out
    run: dict[str, Any] | None = None  # the output's _run.json


def field_text(sample: Sample, name: str) -> str | None:
    text = sample.text(name)
    if text is not None:
        return text
    for where in (sample.meta, sample.meta.get("json") if isinstance(sample.meta.get("json"), dict) else {}):
        value = where.get(name)
        if isinstance(value, str):
            return value
    return None


def candidates_of(sample: Sample, name: str, text: str | None) -> list[str]:
    """The caption first, then the extra candidates a caption stage kept (`meta["candidates"]`)."""
    caption = sample.captions.get(name)
    extra = caption.meta.get("candidates", []) if caption is not None else []
    return ([text] if text is not None else []) + [c for c in extra if isinstance(c, str)]


def load_set(path: str, fields: list[str], kind: str | None = None, with_images: bool = True,
             limit: int | None = None) -> EvalSet:
    """The fields (and images) of the ok samples of `path`, the first `limit` of them when set."""
    from capmill.outputdir import OutputDir
    from capmill.readers.guess import input_for

    if "://" not in path and not os.path.exists(path) and "*" not in path and "{" not in path:
        raise ConfigError(f"{path!r} does not exist")
    config = input_for(path, kind)
    out = EvalSet(source=path, texts={f: [] for f in fields}, candidates={f: [] for f in fields})
    if config.type == "capmill":
        out.run = OutputDir(path).read_run()
    reader = config.build()
    for shard in reader.shards():
        if limit is not None and len(out.keys) >= limit:
            break
        for sample in reader.read(shard):
            if limit is not None and len(out.keys) >= limit:
                break
            if not sample.ok:
                out.excluded[sample.status] += 1
                continue
            out.keys.append(sample.key)
            for name in fields:
                text = field_text(sample, name)
                out.texts[name].append(text)
                out.candidates[name].append(candidates_of(sample, name, text))
            out.images.append(_image_bytes(sample) if with_images else None)
            out.kinds.append(sample.media.kind)
            out.exts.append(sample.media.ext)
    if config.type == "capmill" and limit is None:
        # Dropped samples are not in the shards (only in _rejects/ when asked for): the commit
        # records count every status.
        for stats in OutputDir(path).all_stats():
            dropped = stats.get("by_status", {}).get("dropped", 0)
            if dropped:
                out.excluded["dropped"] += dropped
    return out


def audio_set(data: EvalSet) -> bool:
    """Whether the set's media is audio (then CLAP scores it, and its figures are named CLAP*)."""
    return bool(data.kinds) and all(k == "audio" for k in data.kinds)


def _image_bytes(sample: Sample) -> bytes | None:
    try:
        return sample.image.read_bytes()
    except (OSError, ValueError):
        return None


def read_json_file(path: str, what: str) -> Any:
    """The JSON in the file at `path`; a ConfigError naming it as `what` when it is missing or
    not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path!r} not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} file {path!r} is not valid JSON: {e}") from None


def load_references(path: str) -> dict[str, list[str]]:
    """COCO-style `{"annotations": [{"image_id": KEY, "caption": TEXT}, ...]}`, or a plain
    `{KEY: [TEXT, ...]}` mapping → {key: [references]}. Keys are compared as strings."""
    data = read_json_file(path, "references")
    refs: dict[str, list[str]] = {}
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        for i, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
                raise ConfigError(f"references {path!r}: annotation {i} needs an image_id and a caption string")
            refs.setdefault(str(ann["image_id"]), []).append(ann["caption"])
    elif isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        refs = {str(k): [str(c) for c in v] for k, v in data.items()}
    else:
        raise ConfigError(f"references {path!r}: expected COCO-style {{\"annotations\": [{{\"image_id\", \"caption\"}}]}} "
                          f"or {{KEY: [caption, ...]}}")
    return refs
