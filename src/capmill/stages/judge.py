"""`judge`: a VLM (or an LLM) picks the best candidate, or grades texts.

MLBCAP (multi-LLM collaborative captioning of scientific figures, 2025; no public code) lets a
judge model pick the best of several candidates before refining it, and starts by having an
MLLM grade the original caption's quality to filter the data; CapArena-Auto judges captions
pairwise. Three modes:

- `list`: one request per sample shows every candidate, numbered in a seeded random order; the
  answer is the number of the best.
- `pairwise`: one request per pair of candidates, each pair in a seeded orientation; the answer is
  1, 2 or tie; candidates are ranked by wins (a tie is half a win each).
- `grade`: one request per text (the AltText too): a grade from 1 to `scale`, stored as a score
  (`scores["grade:alt_text"]`) that a `filter` thresholds.

Orders are drawn from the stage's `seed` and the sample's key (`capmill.verdicts.order`), so they
are reproducible and recorded. Answers are read strictly (`capmill.verdicts.parse`: the number
and nothing else); an answer that does not parse is asked for once more, with a note, in one
call for the whole batch, and is then recorded as no verdict. On a `bias_check` share of samples
(drawn from the seed) every comparison is also judged in the reverse order, and
`meta["position_bias"]` says whether the two verdicts agree (`capmill.verdicts.bias_rate` gives
the rate over a run).

Output of `list` and `pairwise`: `captions[STORE_AS]` holds the winner's text (with the model and
prompt id of whoever wrote it) and in `meta`: `chosen`, `judge` (the judging model), `order` (the
candidates as shown), `answer` and `verdict`, `retried`, `top` (every candidate, winner first,
then by wins or in candidate order — what `refine` reads), `wins` (pairwise), `position_bias`,
and `fallback: no_verdict` when the judge gave none, in which case the first candidate in order
wins. A single candidate wins without asking. Candidates the guards flagged do not compete; with
none left, the AltText stands in when it can (`fallback: no_candidate`), else the sample is dropped.

Every candidate enters the prompt through `untrusted`; the judge's answer is never stored as text
(only the parsed verdict and the raw answer, cut to 200 characters, in meta), so the strict parser
is its output guard: an injected or refusing answer is no verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from capmill import keys
from capmill.backends.base import ChatRequest, GenerationParams, LanguageModel, VisionLanguageModel, VLMRequest
from capmill.components import BackendSpec, StageConfig
from capmill.guards.guard import no_candidate
from capmill.keys import Key, StageIO
from capmill.prompts import PromptTemplate, load_template, untrusted
from capmill.sample import BACKEND_ERROR, DECODE_ERROR, TRANSIENT_ERROR, Caption, Sample, candidate_texts
from capmill.stages.base import RunContext, Stage
from capmill.verdicts import TIE, checks_bias, pair_orders, parse_choice, parse_grade, parse_pair, permutation

SLOTS = {"count", "choices", "captions", "first", "second", "caption", "scale", "scale_low", "for_image", "context"}
NO_VERDICT = "no_verdict"
ANSWER_CHARS = 200


def _params() -> GenerationParams:
    # A verdict is a number: a few tokens, greedy, so judging is reproducible.
    return GenerationParams(max_new_tokens=8, temperature=0.0)


class JudgeStageConfig(StageConfig):
    type: Literal["judge"] = "judge"
    backend: BackendSpec
    # Show the judge the image (a VisionLanguageModel); false: an LLM reads the texts alone.
    image: bool = True
    mode: Literal["list", "pairwise", "grade"] = "list"
    # list/pairwise: what competes, a prefix (captions PREFIX.0, …) or text names; grade: the
    # texts to grade (names, e.g. [alt_text]).
    candidates: str | list[str] = "cand"
    # Prompt template (prompts/judge/): default the mode's own.
    template: str | None = None
    prompt_dirs: list[str] = Field(default_factory=list)
    # Show the AltText as context (untrusted) in list and pairwise prompts.
    alt_text: bool = False
    # Seed of the orders shown, combined with each sample's key.
    seed: int = 0
    # Share of samples also judged in the reverse order, to measure position bias.
    bias_check: float = Field(0.0, ge=0, le=1)
    # grade: the scale's top (grades 1 … scale).
    scale: int = Field(5, ge=2, le=100)
    # list/pairwise: key of the winner's caption (default: the stage's name, else "judged");
    # grade: prefix of the grade scores (default: the stage's name, else "grade").
    store_as: str | None = Field(None, min_length=1)
    params: GenerationParams = Field(default_factory=_params)
    # Characters of each candidate (and the AltText) allowed into the prompt.
    max_chars: int = Field(2000, ge=16)

    @model_validator(mode="after")
    def _defaults(self) -> JudgeStageConfig:
        if self.store_as is None:
            self.store_as = self.name or ("grade" if self.mode == "grade" else "judged")
        if self.mode == "grade" and isinstance(self.candidates, str):
            raise ValueError("grade mode grades named texts: give candidates as a list, e.g. [alt_text]")
        return self

    def build(self) -> JudgeStage:
        return JudgeStage(self)

    def load(self) -> PromptTemplate:
        return load_template("judge", self.template or self.mode, self.prompt_dirs).check_slots(SLOTS)

    def io(self, available: frozenset[Key]) -> StageIO:
        names = [k.name for k in keys.candidate_keys(self.candidates, available, f"judge ({self.display_name})")]
        reads = [keys.text(n) for n in names] + ([keys.IMAGE] if self.image else [])
        if self.alt_text and self.mode != "grade":
            reads.append(keys.ALT_TEXT)
        if self.mode == "grade":
            return StageIO(reads=reads, writes=[keys.score(f"{self.store_as}:{n}") for n in names])
        return StageIO(reads=reads, writes=[keys.caption(self.store_as)])

    def backend_roles(self) -> dict[str, type]:
        return {"backend": VisionLanguageModel if self.image else LanguageModel}


@dataclass
class _Ask:
    """One question to the judge and what became of it."""

    sample: Sample
    prompt: str
    system: str | None
    what: tuple  # ("list", order) | ("pair", first, second) | ("grade", name)
    reverse: bool = False  # the bias check's reverse order
    answer: str | None = None
    verdict: int | None = None
    retried: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


class JudgeStage(Stage):
    config: JudgeStageConfig

    def __init__(self, config: JudgeStageConfig):
        super().__init__(config)
        self.template = config.load()
        self.retry_note = str(self.template.options.get("retry", "Reply with the answer alone."))

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        protocol = VisionLanguageModel if self.config.image else LanguageModel
        self.backend = self.load_backend(self.config.backend, protocol, "the judge stage")

    # --- prompts --------------------------------------------------------------------------------

    def _slots(self, sample: Sample, **extra: Any) -> dict[str, Any]:
        cfg, options = self.config, self.template.options
        context = ""
        if cfg.alt_text and cfg.mode != "grade" and (sample.alt_text or "").strip():
            context = "\n" + str(options.get("context", "{alt_text}")).format(
                alt_text=untrusted(sample.alt_text, "alt_text", cfg.max_chars))
        slots = {name: "" for name in SLOTS}
        slots.update(for_image=options.get("for_image", "") if cfg.image else "", context=context,
                     scale=cfg.scale, scale_low=1, **extra)
        return slots

    def _ask(self, sample: Sample, what: tuple, reverse: bool = False, **extra: Any) -> _Ask:
        slots = self._slots(sample, **extra)
        return _Ask(sample, self.template.render(**slots), self.template.render_system(**slots), what, reverse)

    def _list_ask(self, sample: Sample, shown: list[tuple[str, str]], order: list[int], reverse: bool) -> _Ask:
        blocks = "\n\n".join(f"Caption {p + 1}:\n{untrusted(text, 'caption', self.config.max_chars)}"
                             for p, (_, text) in enumerate(shown))
        count = len(shown)
        return self._ask(sample, ("list", order), reverse, count=count, captions=blocks,
                         choices=", ".join(str(i) for i in range(1, count + 1)))

    # --- the batch ------------------------------------------------------------------------------

    def process(self, batch: list[Sample]) -> list[Sample]:
        cfg = self.config
        asks: list[_Ask] = []
        plans: list[tuple[Sample, list[tuple[str, str]], list[_Ask]]] = []
        for sample in batch:
            if cfg.image and sample.image.image is None:
                sample.fail(DECODE_ERROR, "judge needs a decoded image (image.decode is off or decoding failed)")
                continue
            eligible = candidate_texts(sample, cfg.candidates)
            mine = self._grade_asks(sample, eligible) if cfg.mode == "grade" else self._compare_asks(sample, eligible)
            if mine is None:
                continue
            asks.extend(mine)
            plans.append((sample, eligible, mine))
        self._run(asks)
        for sample, eligible, mine in plans:
            if sample.status == TRANSIENT_ERROR:
                continue
            if cfg.mode == "grade":
                self._store_grades(sample, mine)
            elif cfg.mode == "list":
                self._store_list(sample, eligible, mine)
            else:
                self._store_pairwise(sample, eligible, mine)
        return batch

    def _grade_asks(self, sample: Sample, eligible: list[tuple[str, str]]) -> list[_Ask]:
        return [self._ask(sample, ("grade", name), caption=untrusted(text, "caption", self.config.max_chars))
                for name, text in eligible]

    def _compare_asks(self, sample: Sample, eligible: list[tuple[str, str]]) -> list[_Ask] | None:
        cfg = self.config
        if not eligible:
            no_candidate(sample, cfg.store_as, self.name)
            return None
        if len(eligible) == 1:
            return []
        both = checks_bias(cfg.seed, sample.key, cfg.bias_check)
        if cfg.mode == "list":
            order = permutation(cfg.seed, sample.key, len(eligible))
            orders = [order, order[::-1]] if both else [order]
            return [self._list_ask(sample, [eligible[i] for i in o], o, reverse=k == 1) for k, o in enumerate(orders)]
        asks = []
        for first, second in pair_orders(cfg.seed, sample.key, len(eligible)):
            shown = [(first, second), (second, first)] if both else [(first, second)]
            for k, (a, b) in enumerate(shown):
                asks.append(self._ask(sample, ("pair", a, b), k == 1,
                                      first=untrusted(eligible[a][1], "caption", cfg.max_chars),
                                      second=untrusted(eligible[b][1], "caption", cfg.max_chars)))
        return asks

    def _parse(self, ask: _Ask) -> int | None:
        kind = ask.what[0]
        if kind == "list":
            return parse_choice(ask.answer, len(ask.what[1]))
        if kind == "pair":
            return parse_pair(ask.answer)
        return parse_grade(ask.answer, self.config.scale)

    def _send(self, asks: list[_Ask], note: str | None) -> None:
        cfg = self.config
        requests: list[Any] = []
        for ask in asks:
            prompt = ask.prompt if note is None else f"{ask.prompt}\n\n{self._note(ask)}"
            tag = f"{ask.sample.key}:{cfg.store_as}:{len(requests)}" + ("#retry" if note else "")
            if cfg.image:
                requests.append(VLMRequest(prompt=prompt, images=[ask.sample.image.image], system=ask.system,
                                           params=cfg.params, tag=tag))
            else:
                messages = ([{"role": "system", "content": ask.system}] if ask.system else []) + [
                    {"role": "user", "content": prompt}]
                requests.append(ChatRequest(messages=messages, params=cfg.params, tag=tag))
        gens = self.backend.generate(requests) if cfg.image else self.backend.chat(requests)
        for ask, gen in zip(asks, gens, strict=True):
            if not gen.ok:
                if gen.transient:  # no verdict on the candidates: the sample is redone as a whole
                    ask.sample.fail(TRANSIENT_ERROR, f"{self.name}: {gen.error}")
                ask.meta["error"] = gen.error or "no answer"
                continue
            ask.answer = gen.texts[0].strip()
            ask.verdict = self._parse(ask)

    def _note(self, ask: _Ask) -> str:
        count = len(ask.what[1]) if ask.what[0] == "list" else 2
        return self.retry_note.format(count=count, scale=self.config.scale, scale_low=1)

    def _run(self, asks: list[_Ask]) -> None:
        """Every question of the batch in one call; the unparsed ones once more in one call."""
        if not asks:
            return
        self._send(asks, None)
        again = [a for a in asks if a.verdict is None and a.sample.status != TRANSIENT_ERROR]
        for ask in again:
            ask.retried = True
            ask.meta["first_answer"] = (ask.answer or "")[:ANSWER_CHARS]
        if again:
            self._send(again, "retry")
        failed = [a for a in asks if a.meta.get("error") and a.sample.status != TRANSIENT_ERROR]
        for ask in failed:
            if all(a.meta.get("error") for a in asks if a.sample is ask.sample):
                ask.sample.fail(BACKEND_ERROR, f"{self.name}: {ask.meta['error']}")

    # --- storing --------------------------------------------------------------------------------

    def _record(self, ask: _Ask) -> dict[str, Any]:
        out = {"answer": (ask.answer or "")[:ANSWER_CHARS], "verdict": ask.verdict, "retried": ask.retried}
        if ask.retried:
            out["first_answer"] = ask.meta.get("first_answer", "")
        return out

    def _store_grades(self, sample: Sample, asks: list[_Ask]) -> None:
        records = sample.meta.setdefault("verdicts", {})
        for ask in asks:
            key = f"{self.config.store_as}:{ask.what[1]}"
            sample.scores[key] = float(ask.verdict) if ask.verdict is not None else math.nan
            records[key] = {**self._record(ask), "judge": self.backend.model_id, "prompt_id": self.template.prompt_id}

    def _winner_caption(self, sample: Sample, eligible: list[tuple[str, str]], ranking: list[int],
                        meta: dict[str, Any]) -> None:
        cfg = self.config
        name, text = eligible[ranking[0]]
        source = sample.captions.get(name)
        top = [{"name": eligible[i][0], "text": eligible[i][1]} for i in ranking]
        meta = {"chosen": name, "judge": self.backend.model_id, "judge_prompt": self.template.prompt_id,
                "mode": cfg.mode, **meta, "top": top, "candidates": [t["text"] for t in top[1:]]}
        sample.captions[cfg.store_as] = Caption(text=text, source=cfg.store_as, model=source.model if source else None,
                                                prompt_id=source.prompt_id if source else None, meta=meta)

    def _store_list(self, sample: Sample, eligible: list[tuple[str, str]], asks: list[_Ask]) -> None:
        if not asks:  # a single candidate wins without asking
            self._winner_caption(sample, eligible, [0], {"verdict": None, "single_candidate": True})
            return
        first = asks[0]
        order = first.what[1]
        winner = order[first.verdict - 1] if first.verdict is not None else None
        meta: dict[str, Any] = {"order": [eligible[i][0] for i in order], **self._record(first)}
        if winner is None:
            meta["fallback"] = NO_VERDICT
        if len(asks) > 1:
            second = asks[1]
            other = second.what[1][second.verdict - 1] if second.verdict is not None else None
            compared = winner is not None and other is not None
            meta["position_bias"] = {"order": [eligible[i][0] for i in second.what[1]], **self._record(second),
                                     "compared": int(compared), "agree": int(compared and winner == other)}
        best = winner if winner is not None else 0
        self._winner_caption(sample, eligible, [best] + [i for i in range(len(eligible)) if i != best], meta)

    def _store_pairwise(self, sample: Sample, eligible: list[tuple[str, str]], asks: list[_Ask]) -> None:
        if not asks:
            self._winner_caption(sample, eligible, [0], {"verdict": None, "single_candidate": True})
            return
        wins = [0.0] * len(eligible)
        judged: dict[tuple[int, int], int | None] = {}
        pairs, compared, agree = [], 0, 0
        for ask in asks:
            _, a, b = ask.what
            winner = None if ask.verdict is None else (None if ask.verdict == TIE else (a if ask.verdict == 1 else b))
            outcome = None if ask.verdict is None else (TIE if ask.verdict == TIE else winner)
            if not ask.reverse:
                judged[(min(a, b), max(a, b))] = outcome
                if ask.verdict == TIE:
                    wins[a] += 0.5
                    wins[b] += 0.5
                elif winner is not None:
                    wins[winner] += 1
                pairs.append({"shown": [eligible[a][0], eligible[b][0]], **self._record(ask)})
            else:
                before = judged.get((min(a, b), max(a, b)))
                if before is not None and outcome is not None:
                    compared += 1
                    agree += int(before == outcome)
                pairs.append({"shown": [eligible[a][0], eligible[b][0]], "bias_check": True, **self._record(ask)})
        ranking = sorted(range(len(eligible)), key=lambda i: (-wins[i], i))
        meta: dict[str, Any] = {"pairs": pairs, "wins": {eligible[i][0]: wins[i] for i in range(len(eligible))}}
        if all(ask.verdict is None for ask in asks if not ask.reverse):
            meta["fallback"] = NO_VERDICT
        if any(ask.reverse for ask in asks):
            meta["position_bias"] = {"compared": compared, "agree": agree}
        self._winner_caption(sample, eligible, ranking, meta)
