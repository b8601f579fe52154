"""Caption-set statistics that need no model: length, vocabulary, diversity, template collapse.

- words: whitespace tokens; CLIP tokens: CLIP's own BPE (`capmill.text.clip_bpe`), counting the start
  and end tokens, so "over 77" means "truncated by CLIP";
- vocabulary: distinct lower-cased word forms over the set;
- distinct-n (Li et al. 2016): distinct n-grams / total n-grams over the set;
- template collapse: share of captions whose first five words are shared with another caption
  (a captioner stuck on "The image shows a ..." scores high). Captions under five words count
  with their full text.
Empty captions count as 0 words and 2 CLIP tokens.
"""

from __future__ import annotations

import re
from collections import Counter

from capmill.text.clip_bpe import count_clip_tokens

_WORD = re.compile(r"[\w']+")
CLIP_CONTEXT = 77


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def distinct_n(tokenised: list[list[str]], n: int) -> float:
    grams = [tuple(t[i:i + n]) for t in tokenised for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def template_collapse(tokenised: list[list[str]], prefix: int = 5) -> float:
    heads = [tuple(t[:prefix]) for t in tokenised if t]
    if not heads:
        return 0.0
    counts = Counter(heads)
    return sum(1 for h in heads if counts[h] > 1) / len(heads)


def text_stats(texts: list[str], clip_tokens: bool = True) -> dict[str, float]:
    import numpy as np

    tokenised = [words(t) for t in texts]
    out = {
        "captions": float(len(texts)),
        "empty": float(sum(1 for t in texts if not t.strip())),
        "words (mean)": float(np.mean([len(t) for t in tokenised])) if texts else 0.0,
        "vocabulary": float(len({w for t in tokenised for w in t})),
        "distinct-1": distinct_n(tokenised, 1),
        "distinct-2": distinct_n(tokenised, 2),
        "template collapse": template_collapse(tokenised),
    }
    if clip_tokens:
        counts = [count_clip_tokens(t) for t in texts]
        out["CLIP tokens (mean)"] = float(np.mean(counts)) if counts else 0.0
        out["over 77 CLIP tokens"] = float(np.mean([c > CLIP_CONTEXT for c in counts])) if counts else 0.0
    return out
