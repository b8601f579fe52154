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
                   limit: int | None = None, save: bool = True, instances: str | os.PathLike | None = None,
                   compare: bool = False) -> dict[str, EvalResult]:
    """Evaluate each path; record each evaluation of a capmill output in its history.

    `compare`: the two sides of the pairwise arena (when the config has a judge) are the two
    paths (each field against the same field of the other), or with one path its first two fields.
    """
    from capmill.eval import evaluate as evaluate_set
    from capmill.eval import history, load_set
    from capmill.eval.cache import EmbeddingCache, scorer_identity
    from capmill.eval.chair import load_instances
    from capmill.eval.data import audio_set
    from capmill.eval.models import EvalModels
    from capmill.media.image import ImageConfig

    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit}")
    refs, refs_identity = _references(references)
    objects = load_instances(os.fspath(instances)) if instances is not None else None
    needs_images = config.needs_images()
    results, sets = {}, {}
    models = EvalModels(config)
    try:
        for path in paths:
            data = load_set(path, config.fields, kind=kind, with_images=needs_images, limit=limit)
            # The scorer depends on the set's media (CLAP for audio) unless one is configured.
            scorer = config.scorer_config(audio_set(data)) if config.needs_scorer() else None
            scorer_id = scorer_identity(scorer, ImageConfig()) if scorer is not None else None
            cache = EmbeddingCache(path, scorer_id) if data.run is not None and scorer_id else None
            results[path] = evaluate_set(data, config, refs, cache=cache, instances=objects, models=models)
            sets[path] = (data, cache, scorer, scorer_id)
        opponents = _arena(paths, sets, results, config, refs, models) if compare and config.judge is not None \
            and config.runs("arena") else {}
    finally:
        models.close()
    for path in paths:
        data, cache, scorer, scorer_id = sets[path]
        if not (save and data.run is not None):
            continue
        result = results[path]
        entry = {
            "fields": list(config.fields),
            "references": refs_identity,
            "instances": _file_identity(instances),
            "scorer": scorer.model_ids()[0] if scorer is not None else None,
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
        if config.judge is not None:
            entry["judge"] = config.judge.model_ids()[0]
        if path in opponents:
            entry["compared_with"] = opponents[path]
        if cache is not None:
            entry["image_embeddings"] = {"reused": cache.hits, "embedded": cache.misses}
        history.record(path, entry, result.details)
        problem = _track(path, data.run, entry)
        if problem:
            result.notes.append(problem)
    return results


def _file_identity(path) -> dict[str, str] | None:
    from capmill.eval.history import references_identity

    return references_identity(os.fspath(path)) if path is not None else None


def _arena(paths, sets, results, config, refs, models) -> dict[str, str]:
    """Run the arena between the two sides and put each side's figures in its result; returns
    path → what it was compared with (for the history)."""
    from capmill.eval import compare

    if len(paths) == 2:
        label = {p: os.path.basename(os.path.abspath(p)) for p in paths}
        sides = [((paths[0], f), (paths[1], f)) for f in config.fields]
    else:
        if len(config.fields) < 2:
            results[paths[0]].notes.append("arena: --compare needs two fields (or two paths)")
            return {}
        label = {paths[0]: os.path.basename(os.path.abspath(paths[0]))}
        sides = [((paths[0], config.fields[0]), (paths[0], config.fields[1]))]
    opponents = {}
    for (pa, fa), (pb, fb) in sides:
        names = (f"{label[pa]}:{fa}", f"{label[pb]}:{fb}")
        outcome, problem = compare((sets[pa][0], fa), (sets[pb][0], fb), config, refs, models, names)
        if outcome is None:
            for p in {pa, pb}:
                results[p].notes.append(problem)
            continue
        for path, name, side, other in ((pa, fa, "A", names[1]), (pb, fb, "B", names[0])):
            results[path].metrics.setdefault(name, {}).update(outcome.metrics[side])
            results[path].notes.extend(n for n in outcome.notes if n not in results[path].notes)
            opponents[path] = other if pa != pb else f"{names[0]} vs {names[1]}"
            for key, detail in outcome.details.items():
                mine = dict(detail)
                if side == "B":
                    flip = {"win": "loss", "loss": "win"}
                    mine.update(opponent=names[0], position=3 - detail["position"],
                                verdict=flip.get(detail["verdict"], detail["verdict"]))
                results[path].add_details({key: {name: {"arena": mine}}})
    return opponents


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
             instances: str | os.PathLike | None = None,
             scorer: Mapping[str, Any] | Any = None, skip: Sequence[str] = (), bags: Sequence[int] = (99,),
             truematch: Sequence[int] = (3, 5, 7), clip_reference: bool = False, seed: int = 0,
             limit: int | None = None, kind: str | None = None, judge: Mapping[str, Any] | None = None,
             compare: bool = False, verifier: Mapping[str, Any] | None = None, nli: Mapping[str, Any] | None = None,
             parser: Mapping[str, Any] | None = None, embedder: Mapping[str, Any] | None = None,
             t2i: Mapping[str, Any] | None = None, vdc_questions: int = 10, save: bool = True) -> dict[str, Any]:
    """The metrics of `capmill eval` as field → metric → value (None where a value could not be
    computed; the reasons are logged as warnings of the `capmill.eval` logger).

    `path` is a run output, or tar/parquet/jsonl files with captions; two paths give
    {path: field → metric → value} (two runs side by side). `references` is a COCO-style file or
    a mapping key → [reference, ...]; `instances` a COCO instances file (CHAIR); `scorer` an
    ImageTextScorer backend mapping (default CLIP ViT-B/32); `skip` any metric group of
    `capmill eval --skip`; `limit` evaluates the first N ok samples. The backends `judge`
    (OpenCHAIR, facts, VDCscore, and the arena with `compare=True`: two paths, or the first two
    `fields`), `verifier`, `nli`, `parser`, `embedder` and `t2i` are backend mappings as the
    CLI's options take them. `save` adds the result to a run output's `_eval.json`.
    """
    from capmill.eval import EvalConfig

    paths = [os.fspath(p) for p in path] if isinstance(path, (list, tuple)) else [os.fspath(path)]
    raw: dict[str, Any] = {"fields": list(fields), "skip": list(skip), "bags": list(bags), "truematch": list(truematch),
                           "clip_reference": clip_reference, "seed": seed}
    for name, value in (("scorer", scorer), ("judge", judge), ("verifier", verifier), ("nli", nli),
                        ("parser", parser), ("embedder", embedder), ("t2i", t2i)):
        if value is not None:
            raw[name] = value
    if judge is not None:
        raw["vdc"] = {"judge": judge, "questions": vdc_questions}
    try:
        config = EvalConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    results = evaluate_paths(paths, config, references, kind=kind, limit=limit, save=save, instances=instances,
                             compare=compare)
    for p, result in results.items():
        for note in result.notes:
            log.warning("%s: %s", p, note)
    if len(paths) == 1:
        return results[paths[0]].to_json()
    return {p: r.to_json() for p, r in results.items()}
