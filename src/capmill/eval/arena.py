"""The pairwise arena: a vision-language judge compares two captions of each image.

CapArena-Auto (Cheng et al., "CapArena: Benchmarking and Analyzing Detailed Image Captioning in the
LLM Era", 2025; reference njucckevin/CapArena `caparena_auto_eval.py`, `vlm_as_a_judge.py`,
`caparena_auto_scores.py`): the judge sees the image and two captions (and a human reference, when
there is one) and says which is better or that they tie. Which caption is shown first is drawn
per sample from the seed and the sample key (so a rerun shows the same order) and recorded; each
verdict is +1 (a win for side A), −1 (a loss) or 0 (a tie). Replies with no verdict are reported
and not counted.

    win_rate = (wins + ½ ties) / judged samples            (side B: 1 − side A's)

with a percentile bootstrap confidence interval over samples (`bootstrap` resamples, seeded).
Judges favour length, so the mean length in words of each side's judged captions is reported next
to it (`arena words (mean)`), as the reference reports its `Length_Avg`. The reference sums the
verdicts against three fixed baseline models; here the two sides are whatever `--compare` names.
The judging prompt is capmill's own (`prompts/eval/arena_judge.yaml`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from capmill.backends.base import GenerationParams, VLMRequest
from capmill.components import Strict
from capmill.prompts import load_template
from capmill.prompts.safety import delimited_caption

_VERDICT = re.compile(r"(?:verdict|judg(?:e)?ment)\s*[:：]?\s*\**\s*(?:description|caption)?\s*(1|2|tie)\b", re.IGNORECASE)
_BETTER = re.compile(r"\b(?:description|caption)\s*(1|2)\s+is\s+better\b|\b(tie)\b", re.IGNORECASE)


class ArenaConfig(Strict):
    params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=512))
    bootstrap: int = Field(1000, ge=0)
    confidence: float = Field(0.95, gt=0, lt=1)
    # Show the judge the first reference caption, as CapArena-Auto does, when references are given.
    with_reference: bool = True
    # Samples judged per `generate` call (their images are held meanwhile).
    images_per_call: int = Field(16, ge=1)


def read_verdict(text: str | None) -> str | None:
    """"1", "2" or "tie" from a judge's reply: the last "Verdict: …" line, else CapArena's
    "Caption N is better" / "Tie" when exactly one of them is said; None otherwise."""
    text = text or ""
    found = _VERDICT.findall(text)
    if found:
        return found[-1].lower()
    said = {(m.group(1) or m.group(2)).lower() for m in _BETTER.finditer(text)}
    return said.pop() if len(said) == 1 else None


def a_first(seed: int, key: str) -> bool:
    """Whether side A is shown first for `key`: a coin fixed by the seed and the key."""
    return hashlib.sha256(f"{seed}|{key}".encode()).digest()[0] % 2 == 0


def win_rate_ci(scores: list[int], resamples: int, confidence: float, seed: int) -> tuple[float, float, float]:
    """(win rate, low, high) of verdicts in {+1, 0, −1}; a percentile bootstrap over samples."""
    import numpy as np

    wins = (np.asarray(scores, dtype=np.float64) + 1) / 2
    rate = float(wins.mean())
    if resamples == 0 or len(wins) < 2:
        return rate, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = wins[rng.integers(0, len(wins), size=(resamples, len(wins)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return rate, float(low), float(high)


@dataclass
class ArenaResult:
    metrics: dict[str, dict[str, float]] = field(default_factory=lambda: {"A": {}, "B": {}})
    notes: list[str] = field(default_factory=list)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  # key → {position, verdict, …} for side A


def arena(keys: list[str], image_of: Callable[[str], Any], side_a: dict[str, str], side_b: dict[str, str],
          references: dict[str, list[str]] | None, judge: Any, config: ArenaConfig, seed: int = 0,
          names: tuple[str, str] = ("A", "B")) -> ArenaResult:
    """Judge every key that has both captions and an image (`image_of`: key → PIL image or None)."""
    template = load_template("eval", "arena_judge").check_slots({"caption_1", "caption_2", "reference_block"})
    block = template.options.get("reference_block", "{reference}")
    result = ArenaResult()
    pairs = [k for k in keys if side_a.get(k) is not None and side_b.get(k) is not None]
    scores, lengths_a, lengths_b, unparsed, no_image = [], [], [], 0, 0
    for start in range(0, len(pairs), config.images_per_call):
        requests, judged = [], []
        for k in pairs[start:start + config.images_per_call]:
            image = image_of(k)
            if image is None:
                no_image += 1
                continue
            a_is_1 = a_first(seed, k)
            one, two = (side_a[k], side_b[k]) if a_is_1 else (side_b[k], side_a[k])
            refs = (references or {}).get(k) if config.with_reference else None
            reference = block.replace("{reference}", delimited_caption(refs[0], 4000)) if refs else ""
            prompt = template.render(caption_1=delimited_caption(one, 8000), caption_2=delimited_caption(two, 8000),
                                     reference_block=reference)
            requests.append(VLMRequest(prompt=prompt, images=[image], system=template.render_system(),
                                       params=config.params, tag=f"{k}:arena"))
            judged.append((k, a_is_1))
        for (k, a_is_1), gen in zip(judged, judge.generate(requests) if requests else [], strict=True):
            said = read_verdict(gen.texts[0]) if gen.ok else None
            detail = {"opponent": names[1], "position": 1 if a_is_1 else 2}
            if said is None:
                unparsed += 1
                detail["verdict"] = "unparsed"
            else:
                score = 0 if said == "tie" else (1 if (said == "1") == a_is_1 else -1)
                scores.append(score)
                lengths_a.append(len(side_a[k].split()))
                lengths_b.append(len(side_b[k].split()))
                detail["verdict"] = {1: "win", 0: "tie", -1: "loss"}[score]
            result.details[k] = detail
    if no_image:
        result.notes.append(f"arena: {no_image} samples without a readable image were not judged")
    if unparsed:
        result.notes.append(f"arena: {unparsed} of {unparsed + len(scores)} verdicts could not be read (not counted)")
    if not scores:
        for side in ("A", "B"):
            result.metrics[side].update({"win_rate": float("nan"), "arena judged": 0.0})
        return result
    rate, low, high = win_rate_ci(scores, config.bootstrap, config.confidence, seed)
    counts = {"wins": scores.count(1), "ties": scores.count(0), "losses": scores.count(-1)}
    for side, (r, lo, hi), lengths, (w, lo_name) in (
            ("A", (rate, low, high), lengths_a, ("wins", "losses")),
            ("B", (1 - rate, 1 - high, 1 - low), lengths_b, ("losses", "wins"))):
        result.metrics[side].update({
            "win_rate": r, "win_rate_ci_low": lo, "win_rate_ci_high": hi, "arena judged": float(len(scores)),
            "arena wins": float(counts[w]), "arena ties": float(counts["ties"]), "arena losses": float(counts[lo_name]),
            "arena unparsed": float(unparsed), "arena words (mean)": sum(lengths) / len(lengths)})
    return result
