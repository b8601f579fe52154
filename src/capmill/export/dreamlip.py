"""DreamLIP sub-captions: the sentence pool of a sample's long captions, drawn afresh every epoch.

DreamLIP ("DreamLIP: Language-Image Pre-training with Long Captions", Zheng et al., ECCV 2024;
reference zyf0619sjtu/DreamLIP `training/data.py`) trains CLIP on sub-captions of long synthetic
captions: each long caption is split at newlines, at "</s>" and at every period, the pieces are
stripped and empty ones dropped, and the pieces of all of a sample's long captions form one pool,
in caption order. Each time a sample is loaded (so once per epoch) k = 6 sub-captions are drawn
from the pool, without replacement when it holds at least k and with replacement otherwise, and
the raw caption (the AltText) is always trained on beside them.

`capmill export --target dreamlip` writes the whole pool per sample (`KEY.json`: `alt_text`,
`sentences`, `sources`, `k`), and the draw happens where the reference does it, in the training
data pipeline, with this module (pure Python, no capmill dependencies beyond the standard library):

    import webdataset as wds
    from capmill.export.dreamlip import SubCaptionSampler

    sampler = SubCaptionSampler(k=6, seed=0)          # seed it per dataloader worker
    dataset = wds.WebDataset(urls).decode("pil").map(sampler)
    # each sample gains "texts": [AltText, 6 sentences], a different 6 on every pass

One difference on purpose: the reference draws indices from `range(len(pool) - 1)`, so the last
sentence of a pool is never drawn (and a pool of one sentence cannot be drawn from); capmill draws
from the whole pool.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

# DreamLIP's split: a newline, the "</s>" separator of its caption files, or any period.
_SPLIT = re.compile(r"\n|</s>|\.")
# The reference's k (`--num_text`, default 6).
DEFAULT_K = 6


def split_sentences(text: str) -> list[str]:
    """Sub-captions of one long caption, split exactly as the reference splits (every period
    splits, so "3.5 m" gives "3" and "5 m")."""
    return [piece.strip() for piece in _SPLIT.split(text) if piece.strip()]


def sentence_pool(captions: list[str]) -> list[str]:
    """The pool of a sample: the sub-captions of each long caption, in caption order."""
    return [s for caption in captions for s in split_sentences(caption)]


def draw(pool: list[str], k: int, rng: random.Random) -> list[str]:
    """k sub-captions: without replacement when the pool has at least k, else with replacement."""
    if not pool:
        return []
    if len(pool) >= k:
        return rng.sample(pool, k)
    return rng.choices(pool, k=k)


class SubCaptionSampler:
    """A webdataset `map` (or any per-sample callable) adding `texts` = [AltText, k sub-captions].

    Every call draws anew from the sampler's random stream, so a second pass over the data (the
    next epoch) draws other subsets; the stream starts from `seed`, so a run is reproducible for
    a fixed order of samples per worker (give each dataloader worker its own seed).
    """

    def __init__(self, k: int = DEFAULT_K, seed: int = 0, field: str = "json"):
        if k < 1:
            raise ValueError("k must be at least 1")
        self.k = k
        self.field = field
        self.rng = random.Random(seed)

    def texts(self, record: dict[str, Any]) -> list[str]:
        """[AltText (when there is one), k sub-captions] for one exported record."""
        alt = (record.get("alt_text") or "").strip()
        subs = draw(list(record.get("sentences") or []), self.k, self.rng)
        return ([alt] if alt else []) + subs

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        record = sample[self.field]
        if isinstance(record, (bytes, str)):
            record = json.loads(record)
        return {**sample, "texts": self.texts(record)}
