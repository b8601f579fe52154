"""`rank`: order a sample's candidates by any scorer and keep the best k.

Bianco et al. ("Improving Image Captioning Descriptiveness by Ranking and LLM-based Fusion", 2023;
no public code) rank the captions of several captioners by an image-text score (BLIP's ITM and
ITC averaged) and fuse the top two; SLAM-AAC's CLAP-Refine (X-LANCE/SLAM-LLM
`examples/slam_aac/utils/clap_refine.py`) keeps the beam candidate with the highest
embedding similarity to its clip. The score of a candidate here is the weighted mean of what the
config names, each optional:

    scorer    any MediaTextScorer: image–text cosine (CLIP, SigLIP, open_clip), audio–text cosine
              (CLAP, `type: clap`), each sample's media embedded by its kind
    matcher   any ImageTextMatcher (BLIP ITM): the probability that the text matches the image
    reward    any RewardModel: a learned quality score (with the image when `reward_image`)
    scores    prefixes of scores already in the record: `clip` reads scores["clip:cand.3"]

Scores are averaged as they come (`weights` per source, default equal): they are compared only
within a sample, but a source with a wider spread weighs more; weight accordingly. A judge model
ranks through the `judge` stage instead.

Candidates are `candidates: PREFIX` (the captions PREFIX.0, PREFIX.1, … a `candidates` stage
wrote) or a list of text names. Candidates the guards flagged, and empty ones, do not compete.
Ties are broken by candidate order (config order); a NaN score ranks last.

Output: `captions[STORE_AS]` is the best candidate's text, with its model and prompt id, and in
`meta`: `chosen` (its name), `ranking` (every candidate: name, score, per-source scores, rank,
in rank order), `top` (the best `top_k`: name, text, score — what `refine` merges), `candidates`
(the texts of ranks 2…k, for multi-candidate metrics such as SPIDEr-max) and `scorers` (the
models). `scores[STORE_AS]` is the best candidate's score. When no candidate can compete, the
AltText stands in (`meta["fallback"] = "no_candidate"`) if it can, as the caption stage falls
back; otherwise the sample is dropped with the reason.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from capmill import keys
from capmill.backends.base import ImageTextMatcher, MediaTextScorer, RewardModel
from capmill.components import BackendSpec, StageConfig
from capmill.guards.guard import no_candidate
from capmill.keys import Key, StageIO
from capmill.sample import DECODE_ERROR, Caption, Sample, candidate_texts
from capmill.stages.base import RunContext, Stage

SOURCES = ("scorer", "matcher", "reward")


class RankStageConfig(StageConfig):
    type: Literal["rank"] = "rank"
    # What competes: a prefix (captions PREFIX.0, PREFIX.1, …) or a list of text names.
    candidates: str | list[str] = "cand"
    scorer: BackendSpec | None = None
    matcher: BackendSpec | None = None
    reward: BackendSpec | None = None
    # Hand the reward model each candidate's image too (an image-text reward model).
    reward_image: bool = False
    # Prefixes of scores already in the record, one per candidate: "clip" reads "clip:cand.0".
    scores: list[str] = Field(default_factory=list)
    # Weight of each source by name ("scorer", "matcher", "reward", or a score prefix); default 1.
    weights: dict[str, float] = Field(default_factory=dict)
    # Candidates kept in meta["top"] (refine merges the top two: 2).
    top_k: int = Field(1, ge=1)
    # Key of the best candidate's caption and score; default: the stage's name, else "ranked".
    store_as: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _something_to_rank_by(self) -> RankStageConfig:
        sources = self.sources()
        if not sources:
            raise ValueError("rank needs something to rank by: a scorer, a matcher, a reward model, or `scores`")
        unknown = sorted(set(self.weights) - set(sources))
        if unknown:
            raise ValueError(f"weights name {unknown}, which rank does not use; its sources: {sources}")
        if self.store_as is None:
            self.store_as = self.name or "ranked"
        return self

    def sources(self) -> list[str]:
        return [s for s in SOURCES if getattr(self, s) is not None] + list(self.scores)

    def build(self) -> RankStage:
        return RankStage(self)

    def io(self, available: frozenset[Key]) -> StageIO:
        names = [k.name for k in keys.candidate_keys(self.candidates, available, f"rank ({self.display_name})")]
        reads = [keys.text(n) for n in names] + [keys.score(f"{p}:{n}") for p in self.scores for n in names]
        from capmill.stages.score import scorer_media

        if self.scorer is not None:
            reads.append(scorer_media(self.scorer))
        if self.matcher is not None or (self.reward is not None and self.reward_image):
            reads.append(keys.IMAGE)
        return StageIO(reads=reads, writes=[keys.caption(self.store_as), keys.score(self.store_as)])

    def backend_roles(self) -> dict[str, type]:
        from capmill.stages.score import scorer_role

        return {"scorer": scorer_role(self.scorer), "matcher": ImageTextMatcher, "reward": RewardModel}


def order(scores: list[float]) -> list[int]:
    """Indices of `scores` best first; ties keep their order, NaN last."""
    return sorted(range(len(scores)), key=lambda i: (math.isnan(scores[i]), -scores[i] if not math.isnan(scores[i]) else 0, i))


def combine(parts: dict[str, float], weights: dict[str, float]) -> float:
    """The weighted mean of a candidate's scores by source; NaN when any is missing or NaN."""
    if not parts or any(v is None or math.isnan(v) for v in parts.values()):
        return math.nan
    total = sum(weights.get(name, 1.0) for name in parts)
    return sum(weights.get(name, 1.0) * v for name, v in parts.items()) / total if total else math.nan


class RankStage(Stage):
    config: RankStageConfig

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        cfg = self.config
        self.scorer = self.load_backend(cfg.scorer, MediaTextScorer, "rank's scorer") if cfg.scorer else None
        self.matcher = self.load_backend(cfg.matcher, ImageTextMatcher, "rank's matcher") if cfg.matcher else None
        self.reward = self.load_backend(cfg.reward, RewardModel, "rank's reward model") if cfg.reward else None

    def process(self, batch: list[Sample]) -> list[Sample]:
        from capmill.backends.embed import scorer_kinds, why_not

        cfg = self.config
        needs_image = self.matcher is not None or (self.reward is not None and cfg.reward_image)
        kinds = scorer_kinds(self.scorer) if self.scorer is not None else set()
        pairs: list[tuple[int, str, str]] = []  # (sample index, candidate name, text)
        live: list[Sample] = []
        for sample in batch:
            unscorable = why_not(sample.media, kinds, self.scorer.model_id) if self.scorer is not None else None
            if unscorable is not None:
                sample.fail(DECODE_ERROR, f"rank: {unscorable}")
                continue
            if needs_image and sample.image.image is None:
                sample.fail(DECODE_ERROR, "rank needs a decoded image to score its candidates")
                continue
            texts = candidate_texts(sample, cfg.candidates)
            if not texts:
                no_candidate(sample, cfg.store_as, self.name)
                continue
            live.append(sample)
            pairs.extend((len(live) - 1, name, text) for name, text in texts)
        if not pairs:
            return batch
        parts = self._score(live, pairs)
        by_sample: dict[int, list[int]] = {}
        for j, (i, _, _) in enumerate(pairs):
            by_sample.setdefault(i, []).append(j)
        for i, sample in enumerate(live):
            self._store(sample, [pairs[j] for j in by_sample[i]], [parts[j] for j in by_sample[i]])
        return batch

    def _score(self, live: list[Sample], pairs: list[tuple[int, str, str]]) -> list[dict[str, float]]:
        """Per candidate, its score by source: one backend call per source for the whole batch."""
        import numpy as np

        from capmill.metrics.embedding import unit_rows

        cfg = self.config
        texts = [text for _, _, text in pairs]
        parts: list[dict[str, float]] = [{} for _ in pairs]
        images = [live[i].image.image for i, _, _ in pairs]
        if self.scorer is not None:
            from capmill.backends.embed import embed_media

            # One call for the batch's media (images, or audio for CLAP), one for every candidate.
            image_emb, _ = embed_media(self.scorer, [s.media for s in live])
            text_emb = unit_rows(self.scorer.embed_texts(texts))
            rows = np.array([i for i, _, _ in pairs])
            for j, value in enumerate(np.einsum("ij,ij->i", image_emb[rows], text_emb)):
                parts[j]["scorer"] = float(value)
        if self.matcher is not None:
            for j, value in enumerate(self.matcher.match(images, texts)):
                parts[j]["matcher"] = float(value)
        if self.reward is not None:
            for j, value in enumerate(self.reward.score(texts, images if cfg.reward_image else None)):
                parts[j]["reward"] = float(value)
        for prefix in cfg.scores:
            for j, (i, name, _) in enumerate(pairs):
                parts[j][prefix] = float(live[i].scores.get(f"{prefix}:{name}", math.nan))
        return parts

    def _store(self, sample: Sample, pairs: list[tuple[int, str, str]], parts: list[dict[str, float]]) -> None:
        cfg = self.config
        totals = [combine(p, cfg.weights) for p in parts]
        ranked = order(totals)
        ranking = [{"name": pairs[j][1], "score": _json(totals[j]), "by": {k: _json(v) for k, v in parts[j].items()},
                    "rank": r + 1} for r, j in enumerate(ranked)]
        top = [{"name": pairs[j][1], "text": pairs[j][2], "score": _json(totals[j])} for j in ranked[:cfg.top_k]]
        best = ranked[0]
        name = pairs[best][1]
        source = sample.captions.get(name)
        meta: dict[str, Any] = {"chosen": name, "ranking": ranking, "top": top,
                                "candidates": [t["text"] for t in top[1:]], "scorers": self._models()}
        sample.captions[cfg.store_as] = Caption(text=pairs[best][2], source=cfg.store_as,
                                                model=source.model if source else None,
                                                prompt_id=source.prompt_id if source else None, meta=meta)
        sample.scores[cfg.store_as] = totals[best]

    def _models(self) -> dict[str, str]:
        return {s: getattr(self, s).model_id for s in SOURCES if getattr(self, s) is not None} | {
            p: f"scores[{p}:…]" for p in self.config.scores}


def _json(value: float) -> float | None:
    """NaN as null in meta (JSON has no NaN; scores keep theirs)."""
    return None if value is None or math.isnan(value) else value
