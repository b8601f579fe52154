"""`capmill eval`: every figure for every caption field of a set, as field → metric → value.

    load set (+ references) ─► text statistics (no model)
                            ─► scorer: image embeddings once; per field plain and prefixed text
                               embeddings → CLIPScore, RefCLIPScore, R@k (whole set, bags)
                            ─► PTB tokenizer + pycocoevalcap (one METEOR JVM for all fields)

Values that cannot be computed are NaN (written as null in JSON) with a note saying why; an
empty set gives an empty result and a note, never an exception in the middle of a report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from capmill.components import BackendSpec, Strict
from capmill.errors import SetupError
from capmill.eval.data import EvalSet
from capmill.eval.vdcscore import VdcScoreConfig

Metric = Literal["text", "clip", "retrieval", "coco", "vdc"]


def _default_scorer(audio: bool = False) -> dict:
    if audio:  # LAION-CLAP, the audio-text counterpart the audio recipes score with
        return {"type": "clap", "model": "laion/clap-htsat-unfused"}
    # Hessel et al. report CLIPScore with ViT-B/32; its figures are only comparable with that model.
    return {"type": "clip", "model": "openai/clip-vit-base-patch32"}


class EvalConfig(Strict):
    fields: list[str] = Field(default_factory=lambda: ["alt_text"], min_length=1)
    # A MediaTextScorer for CLIPScore, RefCLIPScore and self-retrieval; None: CLIP ViT-B/32, or
    # for a set of audio, CLAP (laion/clap-htsat-unfused), whose figures are named CLAPScore.
    scorer: BackendSpec | None = None
    # Distractors per bag for retrieval with distractors (99 gives RD100).
    bags: list[int] = Field(default_factory=lambda: [99])
    seed: int = 0
    skip: list[Metric] = Field(default_factory=list)
    # Clip the text–reference cosine at 0 in RefCLIPScore (the reference code does not).
    clip_reference: bool = False
    batch_size: int = Field(64, ge=1)
    # VDCscore (video detail captions, AuroraCap/VDC): a language model that asks, answers and
    # judges; computed when references are given too. None: not computed.
    vdc: VdcScoreConfig | None = None

    def scorer_config(self, audio: bool = False):
        """The configured scorer, else the default for the set's media (`audio`: a set of audio)."""
        if self.scorer is not None:
            return self.scorer
        from pydantic import TypeAdapter

        from capmill.components import BackendSpec as Spec

        return TypeAdapter(Spec).validate_python(_default_scorer(audio))


@dataclass
class EvalResult:
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, dict[str, float | None]]:
        return {f: {m: (None if isinstance(v, float) and math.isnan(v) else v) for m, v in ms.items()}
                for f, ms in self.metrics.items()}


def evaluate(data: EvalSet, config: EvalConfig, references: dict[str, list[str]] | None = None,
             scorer: Any = None, coco: Any = None, cache: Any = None) -> EvalResult:
    """All metrics for `data`. `scorer` / `coco` may be passed in to share loaded models and the
    METEOR JVM between calls (e.g. --compare of two runs); `cache` (an `EmbeddingCache` for this
    scorer) keeps image embeddings between evaluations."""
    import time

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
    start = time.perf_counter()
    if "text" not in config.skip:
        from capmill.eval.text_stats import text_stats

        for name in config.fields:
            present = [t for t in data.texts[name] if t is not None]
            if present:
                result.metrics[name].update(text_stats(present))
    result.timings["text"] = time.perf_counter() - start
    if not {"clip", "retrieval"} <= set(config.skip):
        start = time.perf_counter()
        _embedding_metrics(data, config, references, scorer, result, cache)
        result.timings["embedding"] = time.perf_counter() - start
    if references is not None and "coco" not in config.skip:
        start = time.perf_counter()
        _coco_metrics(data, config, references, coco, result)
        result.timings["coco"] = time.perf_counter() - start
    if config.vdc is not None and "vdc" not in config.skip:
        start = time.perf_counter()
        if references is None:
            result.notes.append("VDCscore needs references (--references): not computed")
        else:
            from capmill.eval.vdcscore import vdc_score

            vdc = vdc_score(data.keys, {f: data.texts[f] for f in config.fields}, references, config.vdc)
            for name, metrics in vdc.metrics.items():
                result.metrics[name].update(metrics)
            result.notes.extend(vdc.notes)
        result.timings["vdc"] = time.perf_counter() - start
    return result


def scorer_overlap(run: dict[str, Any] | None, scorer_ids: list[str]) -> list[str]:
    """Stages of the run that used the evaluation scorer's model."""
    if not run:
        return []
    return [stage for stage, ids in (run.get("models") or {}).items() if set(ids) & set(scorer_ids)]


def _embedding_metrics(data: EvalSet, config: EvalConfig, references, scorer, result: EvalResult, cache=None) -> None:
    import numpy as np

    from capmill.metrics import embedding as rf
    from capmill.metrics.embedding import CLIPSCORE_PREFIX

    from capmill.eval.data import audio_set

    audio = audio_set(data)
    owned = scorer is None
    if owned:
        scorer = config.scorer_config(audio).build()
        try:
            scorer.load()
        except SetupError as e:
            raise SetupError(f"{e}. To evaluate without it, name a local scorer (`capmill eval --scorer "
                             "'{type: clip, model: PATH}'`) or leave the image metrics out (`--skip clip,retrieval`)"
                             ) from e
    overlap = scorer_overlap(data.run, [scorer.model_id])
    if overlap:
        result.notes.append(
            f"warning: the evaluation scorer {scorer.model_id} was also used by the run "
            f"({', '.join(overlap)}); captions ranked, filtered or written with it score higher by construction. "
            f"Evaluate with another scorer (--scorer).")
    try:
        images = _embed_images(scorer, data, config.batch_size, cache)
        for name in config.fields:
            rows = [i for i, t in enumerate(data.texts[name]) if t is not None]
            if not rows:
                continue
            texts = [data.texts[name][i] for i in rows]
            img = images[rows]
            plain = _embed_texts(scorer, texts, config.batch_size)
            metrics = result.metrics[name]
            if "clip" not in config.skip:
                # Audio is scored on the plain caption (CLAP was trained on plain sound
                # descriptions), images and videos on "A photo depicts …" as Hessel et al.
                prefix = "" if audio else CLIPSCORE_PREFIX
                prefixed = plain if audio else _embed_texts(scorer, [prefix + t for t in texts], config.batch_size)
                cs = rf.clip_s(img, prefixed)
                label = "CLAPScore" if audio else "CLIPScore"
                metrics[label] = _nanmean(cs, result, f"{name} {label}")
                if references is not None:
                    refs = [references.get(data.keys[i]) for i in rows]
                    ref_embs = _embed_references(scorer, refs, config.batch_size, prefix)
                    rcs = rf.ref_clip_s(cs, prefixed, ref_embs, clip_reference=config.clip_reference)
                    metrics[f"Ref{label}"] = _nanmean(rcs, result, f"{name} Ref{label}")
            if "retrieval" not in config.skip:
                metrics.update(rf.self_retrieval(plain, img, seed=config.seed))
                for bag in config.bags:
                    if bag >= len(rows) - 1:
                        result.notes.append(f"{name}: bags of {bag} distractors need more than {bag + 1} samples; "
                                            f"RD{bag + 1} equals the whole-set figures and is not reported")
                        continue
                    for k, v in rf.self_retrieval(plain, img, bag=bag, seed=config.seed).items():
                        metrics[f"RD{bag + 1} {k}"] = v
            if not np.isfinite(img).all():
                result.notes.append(f"{name}: {int((~np.isfinite(img).all(1)).sum())} images could not be embedded (left out)")
    finally:
        if owned:
            scorer.close()


def _nanmean(values, result: EvalResult, label: str) -> float:
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    bad = int(np.isnan(values).sum())
    if bad:
        result.notes.append(f"{label}: {bad} NaN values (non-finite embeddings or no references) left out of the mean")
    return float(np.nanmean(values)) if bad < len(values) else float("nan")


def _embed_images(scorer, data: EvalSet, batch_size: int, cache=None):
    """One row per sample (NaN where the image is missing or cannot be decoded); rows found in
    `cache` (key and image digest) are not embedded again, new ones are added to it."""
    import numpy as np

    from capmill.errors import SampleError
    from capmill.eval.cache import digest
    from capmill.media.image import ImageConfig, decode_image
    from capmill.media.kinds import sniff_video_ext

    config = ImageConfig()
    rows: list[Any] = [None] * len(data.images)
    digests: list[str] = [""] * len(data.images)
    todo = []
    for i, raw in enumerate(data.images):
        if raw is None:
            continue
        if cache is not None:
            digests[i] = digest(raw)
            rows[i] = cache.get(data.keys[i], digests[i])
            if rows[i] is not None:
                continue
        todo.append(i)
    audio_rows = [i for i in todo if i < len(data.kinds) and data.kinds[i] == "audio"]
    if audio_rows:
        _embed_audio(scorer, data, audio_rows, rows, digests, batch_size, cache)
        todo = [i for i in todo if i not in set(audio_rows)]
    for start in range(0, len(todo), batch_size):
        decoded, where = [], []
        for i in todo[start:start + batch_size]:
            try:
                if sniff_video_ext(data.images[i]) is not None:
                    # A video's embedding is the normalised mean of its frames' (the usual video
                    # CLIPScore); it is computed here, one scorer call per video.
                    frames = np.asarray(scorer.embed_images(_video_frames(data.images[i])))
                    mean = frames.mean(axis=0)
                    rows[i] = (mean / (np.linalg.norm(mean) or 1.0)).astype(frames.dtype)
                    if cache is not None:
                        cache.put(data.keys[i], digests[i], rows[i])
                    continue
                decoded.append(decode_image(data.images[i], config))
                where.append(i)
            except SampleError:
                continue
        if not decoded:
            continue
        # Kept in the scorer's own dtype, so a cached row gives the very figure a fresh one does.
        for i, emb in zip(where, np.asarray(scorer.embed_images(decoded)), strict=True):
            rows[i] = emb
            if cache is not None:
                cache.put(data.keys[i], digests[i], emb)
    if cache is not None:
        cache.save()
    dim = next((len(r) for r in rows if r is not None), 1)
    out = np.full((len(rows), dim), np.nan)
    for i, row in enumerate(rows):
        if row is not None:
            out[i] = row
    return out


def _embed_audio(scorer, data: EvalSet, todo: list[int], rows: list[Any], digests: list[str], batch_size: int,
                 cache=None) -> None:
    """Audio rows decoded as the run decodes audio (mono, 48 kHz) and embedded `batch_size` at a
    time by an AudioTextScorer; rows that cannot be decoded stay None, and a scorer that embeds
    no audio is a SetupError naming the one that does."""
    from capmill.errors import SampleError
    from capmill.media.audio import AudioConfig, decode_audio
    from capmill.sample import MediaRef

    if not callable(getattr(scorer, "embed_audio", None)):
        raise SetupError(f"the evaluation scorer {scorer.model_id} embeds no audio; evaluate audio with a CLAP scorer "
                         "(`--scorer '{type: clap, model: laion/clap-htsat-unfused}'`)")
    config = AudioConfig()
    for start in range(0, len(todo), batch_size):
        waves, where = [], []
        for i in todo[start:start + batch_size]:
            try:
                wave, _ = decode_audio(MediaRef(data=data.images[i], ext=data.exts[i], kind="audio"), config)
            except SampleError:
                continue
            waves.append(wave)
            where.append(i)
        if waves:
            for i, emb in zip(where, scorer.embed_audio(waves), strict=True):
                rows[i] = emb
                if cache is not None:
                    cache.put(data.keys[i], digests[i], emb)


def _video_frames(data: bytes, count: int = 8) -> list[Any]:
    """`count` frames at equal intervals of an encoded video (the eval's view of a video)."""
    from capmill.media.sampling import SamplingConfig
    from capmill.media.video import VideoConfig, decode_video
    from capmill.sample import MediaRef

    frames, _ = decode_video(MediaRef(data=data, kind="video"), VideoConfig(sampling=SamplingConfig(frames=count)))
    return [f.image for f in frames]


def _embed_texts(scorer, texts: list[str], batch_size: int):
    import numpy as np

    return np.concatenate([np.asarray(scorer.embed_texts(texts[i:i + batch_size]), dtype=np.float64)
                           for i in range(0, len(texts), batch_size)])


def _embed_references(scorer, refs: list[list[str] | None], batch_size: int, prefix: str | None = None):
    flat = [(i, r) for i, rs in enumerate(refs) for r in (rs or [])]
    if not flat:
        return [None] * len(refs)
    from capmill.metrics.embedding import CLIPSCORE_PREFIX

    prefix = CLIPSCORE_PREFIX if prefix is None else prefix
    emb = _embed_texts(scorer, [prefix + r for _, r in flat], batch_size)
    rows: list[list[Any]] = [[] for _ in refs]
    for (i, _), row in zip(flat, emb, strict=True):
        rows[i].append(row)
    import numpy as np

    return [np.stack(r) if r else None for r in rows]


def _coco_metrics(data: EvalSet, config: EvalConfig, references, coco, result: EvalResult) -> None:
    from capmill.eval.coco import CocoScorers

    keys = set(data.keys)
    unused = sum(1 for k in references if k not in keys)
    if unused:
        result.notes.append(f"{unused} reference keys match no evaluated sample (ignored)")
    owned = coco is None
    if owned:
        coco = CocoScorers()
    try:
        refs_tok = coco.tokenize({k: references[k] for k in data.keys if references.get(k)})
        for name in config.fields:
            cands = {k: t for k, t in zip(data.keys, data.texts[name], strict=True) if t is not None}
            tok = coco.tokenize({k: [t] for k, t in cands.items()})
            scored = coco.score(refs_tok, {k: v[0] for k, v in tok.items()})
            result.metrics[name].update(scored.corpus)
            if scored.no_references:
                result.notes.append(f"{name}: {scored.no_references} samples have no references (left out of the COCO metrics)")
            if scored.empty:
                result.notes.append(f"{name}: {scored.empty} empty captions left out of the COCO metrics")
            for note in scored.notes:
                if note not in result.notes:
                    result.notes.append(note)
            multi = {k: c for k, c in zip(data.keys, data.candidates[name], strict=True) if len(c) > 1}
            if multi:
                tok_multi = coco.tokenize(multi)
                spider = coco.spider_max(refs_tok, tok_multi)
                if spider is not None:
                    result.metrics[name]["SPIDEr-max"] = spider
                else:
                    result.notes.append(f"{name}: SPIDEr-max needs SPICE (see above)")
    finally:
        if owned:
            coco.close()
