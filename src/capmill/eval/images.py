"""The image-embedding metrics of `capmill eval`: CLIPScore, RefCLIPScore, self-retrieval (the
whole set, random RD bags, TrueMatch bags of similar images) and CLIP-Image-Score.

One ImageTextScorer embeds every image once (cached per scorer under `OUT/_eval_cache/` for a
run output); each field's captions are embedded plain (retrieval) and with CLIPScore's prefix.

CLIP-Image-Score (Ge et al., "Visual Fact Checker: Enabling High-Fidelity Detailed Caption
Generation", CVPR 2024): a text-to-image model draws an image from each caption (`t2i`, a
TextToImage backend; the same seed for every caption), and the score is the mean cosine between
the scorer's embeddings of the drawn and the original image. A caption that leaves things out, or
invents them, draws another picture. The paper's text-to-image model is not fixed here: the
figure depends on it and on the scorer; prompts are cut at the text encoder's window (77 CLIP
tokens for Stable Diffusion).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from capmill.errors import SetupError

if TYPE_CHECKING:
    from capmill.eval.data import EvalSet
    from capmill.eval.runner import EvalConfig, EvalResult


def scorer_overlap(run: dict[str, Any] | None, scorer_ids: list[str]) -> list[str]:
    """Stages of the run that used the evaluation scorer's model."""
    if not run:
        return []
    return [stage for stage, ids in (run.get("models") or {}).items() if set(ids) & set(scorer_ids)]


def embedding_metrics(data: EvalSet, config: EvalConfig, references, scorer, result: EvalResult, cache=None, t2i=None) -> None:
    import numpy as np

    from capmill.eval.data import audio_set
    from capmill.metrics import embedding as rf
    from capmill.metrics.embedding import CLIPSCORE_PREFIX

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
            metrics = result.metrics[name]
            retrieval = config.runs("retrieval") or config.runs("truematch")
            plain = _embed_texts(scorer, texts, config.batch_size) if retrieval else None
            if "clip" not in config.skip:
                # Audio is scored on the plain caption (CLAP was trained on plain sound
                # descriptions), images and videos on "A photo depicts …" as Hessel et al.
                prefix = "" if audio else CLIPSCORE_PREFIX
                prefixed = _embed_texts(scorer, [prefix + t for t in texts], config.batch_size)
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
            if config.runs("truematch"):
                for size in config.truematch:
                    value = rf.truematch_r1(plain, img, size, seed=config.seed)
                    if value != value:
                        result.notes.append(f"{name}: TrueMatch bags of {size} need at least {size} samples with images")
                    else:
                        metrics[f"TrueMatch_R@1_bag{size}"] = value
            if t2i is not None and "image_score" not in config.skip and not audio:
                image_score(name, [data.keys[i] for i in rows], texts, img, scorer, t2i, config, result)
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


def image_score(name: str, keys: list[str], texts: list[str], original, scorer, t2i, config: EvalConfig,
                result: EvalResult) -> None:
    """CLIP-Image-Score of one field (module docstring): draw, embed, compare with the originals."""
    import numpy as np

    from capmill.backends.base import ImageRequest
    from capmill.metrics.embedding import cosine_pairs

    todo = [i for i in range(len(texts)) if np.isfinite(original[i]).all() and texts[i].strip()]
    drawn = np.full(original.shape, np.nan)
    failed = 0
    for start in range(0, len(todo), config.batch_size):
        chunk = todo[start:start + config.batch_size]
        made = t2i.generate_images([ImageRequest(prompt=texts[i], seed=config.seed, tag=f"{keys[i]}:{name}") for i in chunk])
        good = [(i, g.image) for i, g in zip(chunk, made, strict=True) if g.ok]
        failed += len(chunk) - len(good)
        if good:
            for (i, _), emb in zip(good, np.asarray(scorer.embed_images([im for _, im in good])), strict=True):
                drawn[i] = emb
    if failed:
        result.notes.append(f"{name}: the text-to-image model failed on {failed} captions (left out of CLIP-Image-Score)")
    scores = cosine_pairs(original, drawn)
    for i in todo:
        if np.isfinite(scores[i]):
            result.details.setdefault(keys[i], {}).setdefault(name, {})["clip_image_score"] = round(float(scores[i]), 4)
    result.metrics[name]["CLIP-Image-Score"] = _nanmean(scores[todo], result, f"{name} CLIP-Image-Score") if todo else float("nan")
