"""`capmill.evaluate(...)`: `capmill eval` from Python (the CLI calls `evaluate_paths`).

For a capmill output directory, each evaluation is added to `OUT/_eval.json` (the history the
report shows) and image embeddings are cached per scorer under `OUT/_eval_cache/`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from capmill.config import format_validation_error
from capmill.errors import ConfigError

if TYPE_CHECKING:
    from capmill.eval import EvalConfig, EvalResult

log = logging.getLogger("capmill.eval")


def _references(references: str | os.PathLike | Mapping[str, Sequence[str]] | None):
    """(key → references, identity for the history) from a file path or a mapping."""
    from capmill.eval import load_references
    from capmill.eval.history import references_identity

    if references is None:
        return None, None
    if isinstance(references, (str, os.PathLike)):
        path = os.fspath(references)
        return load_references(path), references_identity(path)
    refs = {str(k): [str(t) for t in v] for k, v in references.items()}
    digest = hashlib.sha256(json.dumps(refs, sort_keys=True).encode()).hexdigest()[:16]
    return refs, {"path": None, "sha256": digest}


def evaluate_paths(paths: Sequence[str], config: EvalConfig, references=None, *, kind: str | None = None,
                   limit: int | None = None, save: bool = True) -> dict[str, EvalResult]:
    """Evaluate each path; record each evaluation of a capmill output in its history."""
    from capmill.eval import evaluate as evaluate_set
    from capmill.eval import history, load_set
    from capmill.eval.cache import EmbeddingCache, scorer_identity
    from capmill.media.image import ImageConfig

    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit}")
    refs, refs_identity = _references(references)
    needs_images = not {"clip", "retrieval"} <= set(config.skip)
    results = {}
    for path in paths:
        data = load_set(path, config.fields, kind=kind, with_images=needs_images, limit=limit)
        run_output = data.run is not None
        cache = None
        from capmill.eval.data import audio_set

        scorer_config = config.scorer_config(audio_set(data))
        scorer_id = scorer_identity(scorer_config, ImageConfig()) if needs_images else None
        if run_output and needs_images:
            cache = EmbeddingCache(path, scorer_id)
        result = evaluate_set(data, config, refs, cache=cache)
        results[path] = result
        if save and run_output:
            entry = {
                "fields": list(config.fields),
                "references": refs_identity,
                "scorer": scorer_config.model_ids()[0] if needs_images else None,
                "scorer_id": scorer_id,
                "limit": limit,
                "skip": list(config.skip),
                "bags": list(config.bags),
                "seed": config.seed,
                "samples": len(data.keys),
                "run_config_hash": data.run.get("config_hash"),
                "metrics": result.to_json(),
                "notes": list(result.notes),
            }
            if cache is not None:
                entry["image_embeddings"] = {"reused": cache.hits, "embedded": cache.misses}
            history.record(path, entry)
            problem = _track(path, data.run, entry)
            if problem:
                result.notes.append(problem)
    return results


def _track(path: str, run: dict[str, Any], entry: dict[str, Any]) -> str | None:
    """Log the evaluation to the run's tracker, when its config names one. The figures are
    computed and kept in the history whatever the tracker does: a tracker that cannot be reached
    (or is not installed here) becomes a note, not a failed evaluation."""
    tracking = ((run or {}).get("config") or {}).get("tracking")
    if not tracking:
        return None
    from capmill.tracking import log_evaluation

    try:
        log_evaluation(path, tracking, entry)
    except Exception as e:  # the tracker libraries raise their own types (network, auth, store)
        return f"tracking ({tracking.get('type')}): the evaluation was not logged: {type(e).__name__}: {e}"
    return None


def evaluate(path: str | os.PathLike | Sequence[str | os.PathLike], fields: Sequence[str] = ("alt_text",), *,
             references: str | os.PathLike | Mapping[str, Sequence[str]] | None = None,
             scorer: Mapping[str, Any] | Any = None, skip: Sequence[str] = (), bags: Sequence[int] = (99,),
             clip_reference: bool = False, seed: int = 0, limit: int | None = None, kind: str | None = None,
             save: bool = True) -> dict[str, Any]:
    """The metrics of `capmill eval` as field → metric → value (None where a value could not be
    computed; the reasons are logged as warnings of the `capmill.eval` logger).

    `path` is a run output, or tar/parquet/jsonl files with captions; two paths give
    {path: field → metric → value} (two runs side by side). `references` is a COCO-style file or
    a mapping key → [reference, ...]; `scorer` an ImageTextScorer backend mapping (default CLIP
    ViT-B/32); `skip` any of text, clip, retrieval, coco; `limit` evaluates the first N ok
    samples. `save` adds the result to a run output's `_eval.json`.
    """
    from capmill.eval import EvalConfig

    paths = [os.fspath(p) for p in path] if isinstance(path, (list, tuple)) else [os.fspath(path)]
    raw: dict[str, Any] = {"fields": list(fields), "skip": list(skip), "bags": list(bags),
                           "clip_reference": clip_reference, "seed": seed}
    if scorer is not None:
        raw["scorer"] = scorer
    try:
        config = EvalConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    results = evaluate_paths(paths, config, references, kind=kind, limit=limit, save=save)
    for p, result in results.items():
        for note in result.notes:
            log.warning("%s: %s", p, note)
    if len(paths) == 1:
        return results[paths[0]].to_json()
    return {p: r.to_json() for p, r in results.items()}
