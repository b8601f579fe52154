"""`capmill eval`: every figure for every caption field of a set, as field → metric → value.

    load set (+ references, + instances) ─► text statistics (no model)
        ─► scene graphs (one parse per text)  → facts_per_caption; CAPTURE against the references
        ─► scorer: image embeddings once       → CLIPScore, RefCLIPScore, R@k (whole set, RD bags,
                                                 TrueMatch bags), CLIP-Image-Score (with `t2i`)
        ─► PTB tokenizer + pycocoevalcap       → BLEU, METEOR, ROUGE-L, CIDEr(, SPICE)
        ─► COCO instances                      → CHAIR-i, CHAIR-s
        ─► judge (+ verifier, NLI)             → OpenCHAIR, fact precision / recall / F1, VDCscore
    two sides (`--compare`) + a judge          ─► the pairwise arena: win rate of each side

Each family lives in its own module (`images`, `coco`, `graphs` + `capture`, `chair`, `openchair`,
`facts`, `arena`, `vdcscore`); this one decides what runs and collects the results. Values that
cannot be computed are NaN (written as null in JSON) with a note saying why; a metric whose model
cannot be loaded is skipped with a note naming the model (as SPICE without its Java models); an
empty set gives an empty result and a note, never an exception in the middle of a report.
"""

from __future__ import annotations

import time
from typing import Any

from capmill.errors import SetupError
from capmill.eval.config import EvalConfig, EvalResult
from capmill.eval.data import EvalSet

__all__ = ["EvalConfig", "EvalResult", "compare", "evaluate", "image_reader"]


def image_reader(data: EvalSet):
    """key → decoded PIL image (None when the sample has none or it cannot be decoded), decoded
    on each call: callers hold only the images of the batch they are sending."""
    from capmill.errors import SampleError
    from capmill.media.image import ImageConfig, decode_image

    index = {k: i for i, k in enumerate(data.keys)}
    config = ImageConfig()

    def image_of(key: str):
        raw = data.images[index[key]] if key in index else None
        if raw is None:
            return None
        try:
            return decode_image(raw, config)
        except SampleError:
            return None

    return image_of


def _skipped(result: EvalResult, what: str, error: Exception) -> None:
    result.notes.append(f"{what} skipped: {error}")


def evaluate(data: EvalSet, config: EvalConfig, references: dict[str, list[str]] | None = None,
             scorer: Any = None, coco: Any = None, cache: Any = None, instances: dict[str, set[str]] | None = None,
             models: Any = None) -> EvalResult:
    """All metrics for `data`. `scorer` / `coco` / `models` (an `EvalModels`) may be passed in to
    share loaded models and the METEOR JVM between calls (e.g. --compare of two runs); `cache`
    (an `EmbeddingCache` for this scorer) keeps image embeddings between evaluations."""
    from capmill.eval.models import EvalModels

    result = EvalResult(metrics={f: {} for f in config.fields})
    if data.excluded:
        left = ", ".join(f"{n} {s}" for s, n in data.excluded.most_common())
        result.notes.append(f"{sum(data.excluded.values())} samples that are not ok were left out ({left})")
    if not data.keys:
        result.notes.append("no ok samples to evaluate")
        return result
    for name in config.fields:
        missing = sum(t is None for t in data.texts[name])
        if missing == len(data.keys):
            result.notes.append(f"field {name!r}: no sample has it")
        elif missing:
            result.notes.append(f"field {name!r}: missing in {missing} of {len(data.keys)} samples (left out)")
    owned = models is None
    models = models or EvalModels(config)
    texts = {f: data.texts[f] for f in config.fields}
    try:
        _timed(result, "text", lambda: _text(data, config, result, models))
        if config.needs_scorer():
            _timed(result, "embedding", lambda: _images(data, config, references, scorer, cache, result, models))
        if references is not None and config.runs("coco"):
            from capmill.eval.coco import coco_metrics

            _timed(result, "coco", lambda: coco_metrics(data, config, references, coco, result))
        if references is not None and config.runs("capture"):
            _timed(result, "capture", lambda: _capture(data, texts, config, references, result, models))
        if instances is not None and config.runs("chair"):
            from capmill.eval.chair import chair

            _timed(result, "chair", lambda: result.absorb(chair(data.keys, texts, instances, references)))
        if config.judge is not None:
            _judged(data, texts, config, references, result, models)
    finally:
        if owned:
            models.close()
    return result


def _timed(result: EvalResult, name: str, step) -> None:
    start = time.perf_counter()
    step()
    result.timings[name] = result.timings.get(name, 0.0) + time.perf_counter() - start


def _text(data: EvalSet, config: EvalConfig, result: EvalResult, models) -> None:
    if config.runs("text"):
        from capmill.eval.text_stats import text_stats

        for name in config.fields:
            present = [t for t in data.texts[name] if t is not None]
            if present:
                result.metrics[name].update(text_stats(present))
    if config.runs("richness") and config.runs("text"):
        from capmill.eval.graphs import GraphResult, richness

        part = GraphResult()
        try:
            richness(data.keys, {f: data.texts[f] for f in config.fields}, models.scene_graphs(), part)
        except SetupError as e:
            _skipped(result, f"facts_per_caption (scene-graph parser {models.model_id('parser')})", e)
            return
        result.absorb(part)


def _images(data, config, references, scorer, cache, result, models) -> None:
    from capmill.eval.images import embedding_metrics

    t2i = None
    if config.t2i is not None and config.runs("image_score"):
        try:
            t2i = models.get("t2i")
        except SetupError as e:
            _skipped(result, f"CLIP-Image-Score (text-to-image model {models.model_id('t2i')})", e)
    embedding_metrics(data, config, references, scorer, result, cache, t2i=t2i)


def _capture(data, texts, config, references, result, models) -> None:
    from capmill.eval.graphs import GraphResult, capture

    part = GraphResult()
    try:
        graphs = models.scene_graphs()
        wordnet = models.wordnet() if config.capture.synonym_matching else None
        vectors = models.phrase_vectors() if config.capture.soft_matching else None
        capture(data.keys, texts, references, graphs, wordnet, vectors, config.capture, part)
    except SetupError as e:
        _skipped(result, f"CAPTURE (parser {models.model_id('parser')}, embedder {models.model_id('embedder')}, WordNet)", e)
        return
    result.absorb(part)
    result.timings["capture_parse"] = graphs.parse_s + graphs.tag_s
    if vectors is not None:
        result.timings["capture_embed"] = vectors.seconds
    result.timings["capture_match"] = part.timings.get("capture_match", 0.0)


def _judged(data, texts, config, references, result, models) -> None:
    """The metrics that ask the judge: OpenCHAIR, facts, VDCscore."""
    judge_id = models.model_id("judge")
    if references is not None and config.runs("openchair"):
        from capmill.eval.openchair import openchair

        try:
            llm = models.get("judge")
        except SetupError as e:
            _skipped(result, f"OpenCHAIR (judge {judge_id})", e)
        else:
            _timed(result, "openchair", lambda: result.absorb(openchair(data.keys, texts, references, llm, config.openchair)))
    if config.runs("facts"):
        _timed(result, "facts", lambda: _facts(data, texts, config, references, result, models))
    if config.vdc is not None and config.runs("vdc"):
        if references is None:
            result.notes.append("VDCscore needs references (--references): not computed")
            return
        from capmill.eval.vdcscore import vdc_score

        try:
            llm = models.get("judge")
        except SetupError as e:
            _skipped(result, f"VDCscore (judge {judge_id})", e)
            return
        _timed(result, "vdc", lambda: result.absorb(vdc_score(data.keys, texts, references, config.vdc, judge=llm)))


def _facts(data, texts, config, references, result, models) -> None:
    from capmill.eval.facts import Decomposer, fact_scores

    try:
        decompose = Decomposer(models.get("judge"), config.facts)
        verifier = models.get("verifier") if config.verifier is not None else None
        nli = models.get("nli") if config.nli is not None else None
    except SetupError as e:
        roles = [f"judge {models.model_id('judge')}"] + [f"{r} {models.model_id(r)}" for r in ("verifier", "nli")
                                                           if getattr(config, r) is not None]
        _skipped(result, f"fact precision and recall ({', '.join(roles)})", e)
        return
    result.absorb(fact_scores(data.keys, texts, references, decompose, image_reader(data), verifier, nli, config.facts))


def compare(side_a: tuple[EvalSet, str], side_b: tuple[EvalSet, str], config: EvalConfig,
            references: dict[str, list[str]] | None, models: Any, names: tuple[str, str]):
    """The pairwise arena of field `side_a[1]` of one set against field `side_b[1]` of another (or
    the same) set, on the keys both have; an `ArenaResult` (metrics under "A" and "B"), or None
    with the reason when the judge is missing or cannot judge images."""
    from capmill.eval.arena import arena

    (data_a, field_a), (data_b, field_b) = side_a, side_b
    try:
        judge = models.get("arena_judge")
    except SetupError as e:
        return None, f"arena skipped (judge {models.model_id('judge')}): {e}"
    texts_a = dict(zip(data_a.keys, data_a.texts[field_a], strict=True))
    texts_b = dict(zip(data_b.keys, data_b.texts[field_b], strict=True))
    keys = [k for k in data_a.keys if k in texts_b]
    if not keys:
        return None, "arena: the two sides share no sample key: nothing to judge"
    return arena(keys, image_reader(data_a), texts_a, texts_b, references, judge, config.arena, config.seed, names), None
