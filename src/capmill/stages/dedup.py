"""`dedup`: drop exact and near duplicates of images and captions, keeping the first seen.

Exact: a BLAKE2 digest (16 bytes) of the image's encoded bytes, or of a caption's normalised text
(Unicode NFKC, case-folded, punctuation removed, whitespace collapsed). Near: cosine ≥
`threshold` between embeddings (images with an ImageTextScorer, captions with a TextEmbedder or
the scorer's text tower), as in the dataset-shaping notes of MMC4/LAION and METHODS.md §10.

Exact duplicates of what the input itself holds (`image` bytes, `alt_text`) are decided by the
fit step (see capmill.fit) over the whole input before the run streams: of each group of equal
digests the first sample in input order (shards in order, samples in shard order) is kept, and
every other one is dropped as its duplicate. The decision is therefore the same under any number
of Ray actors, any arrival order, and on resume. It is taken on the input as read: a kept first
copy that a stage before `dedup` drops (or whose image fails to decode) still counts as the copy
that was kept, so put `dedup` first. The fit reads the input once more (image bytes, no
decoding); `fit_exact: false` decides these targets while streaming instead, as the caption
targets always are.

Scale and memory. The streaming index (caption targets, near duplicates, and input targets with
`fit_exact: false`) lives in the stage and covers the whole run:
- exact: ≈ 150 bytes per kept sample and target (digest, key, set/dict overhead): 10M samples
  with two targets ≈ 3 GB;
- near: one float32 embedding per kept sample and target (512-d: 2 KiB; 1M samples ≈ 2 GiB), and
  each new sample is compared with all of them (O(kept) per sample). `near_window` bounds both:
  only the last W kept samples are compared, so duplicates further apart than W are missed.
For datasets beyond that, dedup per part (run the stage on subsets of the shards) or lower the
window. Which copy survives depends on arrival order; exactly one always does.

With streaming, which copy survives depends on arrival order (exactly one always does). On Ray
the stage then runs in one actor of its own that every shard owner feeds (`keeps_run_state`);
with `resources.concurrency` above one, each actor keeps its own index. The fit step's index holds a
digest and a key per distinct value during the fit (≈ 150 bytes each) and stores only the
duplicates' keys.

Resume. The digests of each kept sample are stored in `meta["dedup"]`. On `setup` the streaming
index is rebuilt from the committed shards of this run's own output directory (digests read back;
near embeddings recomputed from the stored captions and, with a tar writer, images), so a resumed
run still keeps exactly one copy of each duplicate group.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections import deque
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, model_validator

from capmill import keys
from capmill.backends.base import ImageTextScorer, TextEmbedder
from capmill.components import BackendSpec, StageConfig
from capmill.errors import ConfigError
from capmill.fit.request import FitRequest
from capmill.keys import Key, StageIO
from capmill.sample import DROPPED, Sample
from capmill.stages.base import RunContext, Stage

IMAGE = "image"
ALT_TEXT = "alt_text"
# Exact targets the input itself holds, which the fit step can decide before the run.
INPUT_TARGETS = (IMAGE, ALT_TEXT)
_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def exact_digest(sample: Sample, target: str) -> str | None:
    """Digest of the image bytes or of a caption's normalised text; None when there is nothing."""
    if target == IMAGE:
        data = sample.image.data
        return digest(data) if data else None
    text = sample.text(target)
    norm = normalise_text(text) if text else ""
    return digest(norm.encode("utf-8")) if norm else None


class DedupStageConfig(StageConfig):
    type: Literal["dedup"] = "dedup"
    # Exact targets: "image" and/or caption fields ("alt_text", "dsc", ...).
    exact: list[str] = Field(default_factory=lambda: [IMAGE])
    # Near targets; need `backend`.
    near: list[str] = Field(default_factory=list)
    threshold: float = Field(0.95, gt=-1, le=1)
    backend: BackendSpec | None = None
    # Compare each sample with only the last W kept samples (None: all of them).
    near_window: int | None = Field(None, ge=1)
    # Decide exact duplicates of input fields (image, alt_text) over the whole input in the fit
    # step (deterministic under any concurrency); false: while streaming, by arrival order.
    fit_exact: bool = True

    @property
    def keeps_run_state(self) -> bool:
        """It decides while streaming from what it has seen (caption or near duplicates): an
        executor running several copies of stages (Ray's shard owners) gives it one actor of its
        own unless `resources.concurrency` says otherwise."""
        return bool(self.near) or any(t not in self.fitted_targets for t in self.exact)

    @property
    def fitted_targets(self) -> list[str]:
        return [t for t in self.exact if t in INPUT_TARGETS] if self.fit_exact else []

    @model_validator(mode="after")
    def _near_needs_backend(self) -> DedupStageConfig:
        if self.near and self.backend is None:
            raise ValueError("near dedup needs a `backend` (an ImageTextScorer for images, a TextEmbedder for captions)")
        if not self.exact and not self.near:
            raise ValueError("dedup needs at least one `exact` or `near` target")
        return self

    def build(self) -> DedupStage:
        return DedupStage(self)

    def io(self, available: frozenset[Key]) -> StageIO:
        targets = dict.fromkeys([*self.exact, *self.near])
        return StageIO(reads=[keys.IMAGE if t == IMAGE else keys.text(t) for t in targets])

    def backend_roles(self) -> dict[str, type]:
        # Near images need an image-text scorer; near captions take a text embedder (or a scorer).
        return {"backend": ImageTextScorer if IMAGE in self.near else TextEmbedder}


class _NearIndex:
    """Kept embeddings of one target, in blocks, optionally bounded to the last `window` rows."""

    def __init__(self, window: int | None):
        self.rows: deque = deque(maxlen=window)
        self.keys: deque = deque(maxlen=window)
        self._matrix = None

    def add(self, vector, key: str) -> None:
        self.rows.append(vector)
        self.keys.append(key)
        self._matrix = None

    def best(self, vector) -> tuple[float, str | None]:
        import numpy as np

        if not self.rows:
            return -1.0, None
        if self._matrix is None:
            self._matrix = np.stack(self.rows).astype(np.float32)
        sims = self._matrix @ vector.astype(np.float32)
        i = int(sims.argmax())
        return float(sims[i]), self.keys[i]


class DedupStage(Stage):
    config: DedupStageConfig

    @property
    def needs_fit(self) -> bool:
        return bool(self.config.fitted_targets)

    def fit_request(self) -> FitRequest:
        return FitRequest(image_bytes=IMAGE in self.config.fitted_targets, alt_text=True)

    def fit(self, ctx: RunContext, samples: Iterator[Sample]) -> dict[str, Any]:
        """First occurrence in input order wins, per target in config order; a sample dropped for
        one target does not enter the index of the next (as when streaming)."""
        targets = self.config.fitted_targets
        seen: dict[str, dict[str, str]] = {t: {} for t in targets}
        duplicates: dict[str, list[str]] = {}
        n = 0
        for sample in samples:
            n += 1
            record: dict[str, str] = {}
            for target in targets:
                value = exact_digest(sample, target)
                if value is None:
                    continue
                first = seen[target].get(value)
                if first is not None and first != sample.key:
                    duplicates[sample.key] = [target, first]
                    break
                record[target] = value
            if sample.key not in duplicates:
                for target, value in record.items():
                    seen[target].setdefault(value, sample.key)
        return {"targets": targets, "samples": n, "duplicates": duplicates}

    def fit_summary(self, state: dict[str, Any]) -> str:
        return (f"{len(state['duplicates'])} of {state['samples']} input samples are exact duplicates "
                f"({', '.join(state['targets'])}), decided before the run")

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        cfg = self.config
        self.duplicates: dict[str, list[str]] = self.fit_state["duplicates"] if self.fit_state else {}
        self.streamed = [t for t in cfg.exact if t not in cfg.fitted_targets]
        self.backend = None
        if cfg.near:
            self.backend = cfg.backend.build()
            if IMAGE in cfg.near and not isinstance(self.backend, ImageTextScorer):
                raise ConfigError("near dedup of images needs an ImageTextScorer backend (clip, open_clip, ...)")
            if not isinstance(self.backend, (ImageTextScorer, TextEmbedder)):
                raise ConfigError("near dedup needs an ImageTextScorer or TextEmbedder backend")
            self.backend.load()
        self.seen: dict[str, dict[str, str]] = {t: {} for t in self.streamed}
        self.near_index = {t: _NearIndex(cfg.near_window) for t in cfg.near}
        if (self.streamed or self.near_index) and ctx.out_dir and ctx.resuming and os.path.isdir(ctx.out_dir):
            self._seed_from_output(ctx)

    def teardown(self) -> None:
        if getattr(self, "backend", None) is not None:
            self.backend.close()

    def _embed(self, target: str, samples: list[Sample]):
        from capmill.metrics.embedding import unit_rows

        if target == IMAGE:
            return unit_rows(self.backend.embed_images([s.image.image for s in samples]))
        texts = [s.text(target) or "" for s in samples]
        embed = self.backend.embed if isinstance(self.backend, TextEmbedder) else self.backend.embed_texts
        return unit_rows(embed(texts))

    def _seed_from_output(self, ctx: RunContext) -> None:
        """Rebuild the index from the committed shards of this output (resume)."""
        from capmill.outputdir import OutputDir
        from capmill.readers.run_output import RunOutputInput

        if OutputDir(ctx.out_dir).read_run() is None or not OutputDir(ctx.out_dir).committed():
            return
        reader = RunOutputInput(path=ctx.out_dir, only_ok=True).build()
        batch: list[Sample] = []
        for shard in reader.shards():
            for sample in reader.read(shard):
                for target, value in (sample.meta.get("dedup") or {}).items():
                    if target in self.seen:
                        self.seen[target].setdefault(value, sample.key)
                if self.near_index:
                    batch.append(sample)
                    if len(batch) == 64:
                        self._seed_near(ctx, batch)
                        batch = []
        if batch:
            self._seed_near(ctx, batch)

    def _seed_near(self, ctx: RunContext, batch: list[Sample]) -> None:
        from capmill.media.decode import decode_one
        from capmill.media.image import ImageConfig

        for target, index in self.near_index.items():
            usable = batch
            if target == IMAGE:
                for s in batch:
                    if s.image.image is None and s.image.data is not None:
                        decode_one(s, ctx.image or ImageConfig())
                usable = [s for s in batch if s.image.image is not None]
                if len(usable) < len(batch):
                    ctx.logger.warning("dedup: %d committed samples have no image in the output (no tar writer); "
                                       "near image duplicates of them are not detected on resume", len(batch) - len(usable))
            else:
                usable = [s for s in batch if s.text(target)]
            if usable:
                for s, v in zip(usable, self._embed(target, usable), strict=True):
                    index.add(v, s.key)

    def process(self, batch: list[Sample]) -> list[Sample]:
        cfg = self.config
        for sample in batch:
            record: dict[str, str] = {}
            for target in cfg.exact:
                if target not in self.seen:  # decided by the fit step
                    duplicate = self.duplicates.get(sample.key)
                    if duplicate is not None and duplicate[0] == target:
                        self._drop(sample, f"dedup: exact {target}", duplicate[1])
                        break
                    continue
                value = exact_digest(sample, target)
                if value is None:
                    continue
                first = self.seen[target].get(value)
                if first is not None and first != sample.key:
                    self._drop(sample, f"dedup: exact {target}", first)
                    break
                record[target] = value
            if sample.status == DROPPED:
                continue
            for target, value in record.items():
                self.seen[target][value] = sample.key
            sample.meta["dedup"] = record
        self._near(batch)
        for sample in batch:  # a sample near-dropped just now must not stand as the first copy
            if sample.status == DROPPED and "dedup" in sample.meta:
                for target, value in sample.meta.pop("dedup").items():
                    if target in self.seen and self.seen[target].get(value) == sample.key:
                        del self.seen[target][value]
        return batch

    def _near(self, batch: list[Sample]) -> None:
        for target, index in self.near_index.items():
            candidates = [s for s in batch if s.status != DROPPED and self._embeddable(s, target)]
            if not candidates:
                continue
            vectors = self._embed(target, candidates)
            for sample, vector in zip(candidates, vectors, strict=True):
                if sample.status == DROPPED:
                    continue  # dropped for an earlier target of this batch
                sim, other = index.best(vector)
                if other is not None and sim >= self.config.threshold:
                    self._drop(sample, f"dedup: near {target}", other, sim)
                else:
                    index.add(vector, sample.key)

    @staticmethod
    def _embeddable(sample: Sample, target: str) -> bool:
        if target == IMAGE:
            return sample.image.image is not None
        text = sample.text(target)
        return bool(text and text.strip())

    def _drop(self, sample: Sample, reason: str, other: str, similarity: Any = None) -> None:
        sample.status, sample.error = DROPPED, reason
        sample.meta["duplicate_of"] = other
        if similarity is not None:
            sample.meta["duplicate_similarity"] = round(float(similarity), 6)
