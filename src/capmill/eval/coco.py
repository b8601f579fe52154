"""COCO caption metrics through pycocoevalcap, exactly as its `COCOEvalCap` computes them.

BLEU-1..4, METEOR, ROUGE-L and CIDEr-D (pycocoevalcap's `Cider` is the CIDEr-D variant) on
captions tokenised by its PTB tokenizer (Stanford CoreNLP, Java); SPICE when its Stanford models
are installed. Items are scored in sorted key order, so the result does not depend on the order
of the references file. One METEOR JVM serves every field of a session.

Documented values for awkward input: an empty candidate (nothing left after tokenisation) cannot
be scored by pycocoevalcap (ROUGE-L divides by its length), so it is left out of these metrics and
counted in `empty`; items without references are left out and counted in `no_references`.
SPIDEr-max (Labbé, Pellegrini and Pinquier, "Is my automatic audio captioning system so bad?
SPIDEr-max: a metric to consider several caption candidates", DCASE 2022 Workshop; SPIDEr itself is
Liu et al. 2017; reference Labbeti/aac-metrics `functional/spider_max.py`) takes, per item, the
candidate with the best SPIDEr = (CIDEr-D + SPICE)/2 and averages those; it needs SPICE.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from capmill.errors import SetupError

if TYPE_CHECKING:
    from capmill.eval.data import EvalSet
    from capmill.eval.runner import EvalConfig, EvalResult

SPICE_HELP = (
    "SPICE skipped: its Stanford CoreNLP 3.6.0 models are not installed. With network access run "
    "`python -c 'from pycocoevalcap.spice.get_stanford_models import get_stanford_models as g; g()'` "
    "(downloads about 1 GB into pycocoevalcap/spice/lib), then rerun."
)
COCO_NAMES = {"Bleu_1": "BLEU-1", "Bleu_2": "BLEU-2", "Bleu_3": "BLEU-3", "Bleu_4": "BLEU-4",
              "METEOR": "METEOR", "ROUGE_L": "ROUGE-L", "CIDEr": "CIDEr", "SPICE": "SPICE"}


def spice_available() -> bool:
    import pycocoevalcap.spice as spice_pkg

    lib = os.path.join(os.path.dirname(spice_pkg.__file__), "lib")
    return all(os.path.exists(os.path.join(lib, f"stanford-corenlp-3.6.0{s}.jar")) for s in ("", "-models"))


def _require_java() -> None:
    if shutil.which("java") is None:
        raise SetupError("the COCO metrics need Java (PTB tokenizer, METEOR): install a JRE, e.g. "
                         "`apt-get install default-jre-headless`, or skip them with --skip coco")


@dataclass
class CocoResult:
    corpus: dict[str, float] = field(default_factory=dict)
    per_item: dict[str, dict[str, float]] = field(default_factory=dict)
    scored: int = 0
    empty: int = 0
    no_references: int = 0
    notes: list[str] = field(default_factory=list)


class CocoScorers:
    """The pycocoevalcap scorers, started once (METEOR keeps a JVM) and reused for every field."""

    def __init__(self, spice: bool | None = None):
        try:
            import pycocoevalcap  # noqa: F401
        except ImportError:
            raise SetupError("the COCO metrics need pycocoevalcap: pip install 'capmill[eval]'") from None
        _require_java()
        self.use_spice = spice_available() if spice is None else spice
        self._meteor = None

    @property
    def meteor(self):
        if self._meteor is None:
            from pycocoevalcap.meteor.meteor import Meteor

            self._meteor = Meteor()
        return self._meteor

    def tokenize(self, texts: dict[str, list[str]]) -> dict[str, list[str]]:
        """PTB-tokenise {key: [caption, ...]}; keys that come back empty map to [""] per caption."""
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        if not texts:
            return {}
        tokenized = PTBTokenizer().tokenize({k: [{"caption": t} for t in v] for k, v in texts.items()})
        return {k: tokenized.get(k, [""] * len(v)) for k, v in texts.items()}

    def score(self, references: dict[str, list[str]], candidates: dict[str, str]) -> CocoResult:
        """Corpus and per-item metrics for {key: candidate} against {key: [reference, ...]} (both
        already tokenised)."""
        result = CocoResult()
        keys = []
        for key in sorted(candidates):
            if not references.get(key):
                result.no_references += 1
            elif not candidates[key].strip():
                result.empty += 1
            else:
                keys.append(key)
        result.scored = len(keys)
        if not keys:
            result.notes.append("no item has both a non-empty caption and references: COCO metrics not computed")
            return result
        gts = {k: references[k] for k in keys}
        res = {k: [candidates[k]] for k in keys}
        for method, values in self._run(gts, res):
            for name, (corpus, items) in values.items():
                result.corpus[COCO_NAMES[name]] = float(corpus)
                for k, v in zip(keys, items, strict=True):
                    result.per_item.setdefault(k, {})[COCO_NAMES[name]] = _item_value(v)
        if not self.use_spice:
            result.notes.append(SPICE_HELP)
        return result

    def _run(self, gts, res):
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        scorers: list[tuple[Any, list[str]]] = [
            (Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]),
            (self.meteor, ["METEOR"]),
            (Rouge(), ["ROUGE_L"]),
            (Cider(), ["CIDEr"]),
        ]
        if self.use_spice:
            from pycocoevalcap.spice.spice import Spice

            scorers.append((Spice(), ["SPICE"]))
        for scorer, names in scorers:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap's BLEU prints debug lines
                corpus, items = scorer.compute_score(gts, res)
            if len(names) == 1:
                corpus, items = [corpus], [items]
            yield scorer, {n: (c, i) for n, c, i in zip(names, corpus, items, strict=True)}

    def spider_max(self, references: dict[str, list[str]], candidates: dict[str, list[str]]) -> float | None:
        """Mean over items of the best (CIDEr-D + SPICE)/2 among each item's candidates."""
        if not self.use_spice:
            return None
        import numpy as np

        keys = sorted(k for k in candidates if references.get(k) and any(c.strip() for c in candidates[k]))
        if not keys:
            return None
        width = max(len(candidates[k]) for k in keys)
        best = np.full(len(keys), -np.inf)
        # One pass per candidate position over all items, so CIDEr-D's document frequencies come
        # from the references exactly once, as for a single caption set.
        for j in range(width):
            res = {}
            for k in keys:
                cands = [c for c in candidates[k] if c.strip()]
                res[k] = [cands[min(j, len(cands) - 1)]]
            gts = {k: references[k] for k in keys}
            values = dict(self._run_cider_spice(gts, res))
            best = np.maximum(best, (np.asarray(values["CIDEr"]) + np.asarray(values["SPICE"])) / 2)
        return float(best.mean())

    def _run_cider_spice(self, gts, res):
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.spice.spice import Spice

        yield "CIDEr", Cider().compute_score(gts, res)[1]
        yield "SPICE", [_item_value(v) for v in Spice().compute_score(gts, res)[1]]

    def close(self) -> None:
        if self._meteor is not None:
            try:
                self._meteor.meteor_p.stdin.close()
                self._meteor.meteor_p.kill()
                self._meteor.meteor_p.wait(timeout=10)
            except OSError:
                pass
            self._meteor = None


def _item_value(v: Any) -> float:
    """Per-item values: floats, numpy scalars, or SPICE's nested {"All": {"f": ...}}."""
    if isinstance(v, dict):
        return float(v.get("All", {}).get("f", float("nan")))
    return float(v)


def coco_metrics(data: EvalSet, config: EvalConfig, references, coco, result: EvalResult) -> None:
    """The COCO metrics (and SPIDEr-max) of every field of `data` into `result`; `coco` may be a
    `CocoScorers` shared between calls (None: one is started and closed here)."""
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
