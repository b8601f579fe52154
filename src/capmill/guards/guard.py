"""One output guard for every generating stage: check, regenerate in batches, settle.

Every stage that stores model-written text calls it the same way:

    guard = OutputGuard(config.guards, extra=STAGE_CHECKS, stage="fuse")   # in __init__
    items = [Guarded(text, GuardInput(sources={...}, prompt=..., finish=...), owner=job) ...]
    failing = settle(guard, items, regenerate=lambda items: backend.chat([...one request each...]))
    # passing items: store item.text; failing ones: the stage's fallback, item.meta(outcome)

`settle` checks every item, sends all rejected ones back to the backend in ONE call per round
(`config.regenerate` rounds, each request carrying a note per reason from
`prompts/guards/regenerate.yaml`), and cuts a text whose only fault is a truncated end back to
its last complete sentence. What is still rejected then is the stage's to handle: fall back to
an input, keep it flagged, or drop the sample — always recording `meta["guards"]` (the rejected
texts with their reasons and details, and the outcome), which the run's stats count by reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from capmill.errors import ConfigError
from capmill.guards.checks import (
    CHECKS,
    CODE_REASON,
    EMPTY,
    INJECTION,
    LOOP,
    MARKUP_REASON,
    TRUNCATED,
    Check,
    GuardInput,
    find_loop,
    instruction_signal,
    repair_truncated,
    words,
)
from capmill.guards.config import GuardConfig
from capmill.guards.language import NAMES
from capmill.guards.patterns import ACTIVE_MARKUP, CODE, MARKUP

if TYPE_CHECKING:
    from capmill.backends.base import Generation

# Characters of a rejected text kept in the caption's meta.
REJECTED_CHARS = 500
REGENERATED, REPAIRED, FALLBACK, FLAGGED, DROPPED = "regenerated", "repaired", "fallback", "flagged", "dropped"


@dataclass(frozen=True)
class Verdict:
    reasons: tuple[str, ...] = ()
    details: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def reason(self) -> str | None:
        """The reason a fallback names: the first check (in run order) that fired."""
        return self.reasons[0] if self.reasons else None

    def to_meta(self) -> dict[str, Any]:
        return {"reasons": list(self.reasons), "details": dict(self.details)}


PASSED = Verdict()


def finish_reason(meta: dict[str, Any] | None, index: int = 0) -> str | None:
    """The finish reason of candidate `index` as backends report it: `finish_reasons`
    (OpenAI-compatible servers, vLLM) or `truncated` flags (transformers); "length" when the
    backend stopped at its token limit."""
    meta = meta or {}
    reasons = meta.get("finish_reasons")
    if isinstance(reasons, list) and len(reasons) > index:
        return reasons[index]
    truncated = meta.get("truncated")
    if isinstance(truncated, list) and len(truncated) > index:
        return "length" if truncated[index] else "stop"
    return None


class OutputGuard:
    """The checks of one stage: the generic ones of `capmill.guards.checks` plus the stage's own
    (`extra`, run after them), minus those its config skips."""

    def __init__(self, config: GuardConfig, extra: dict[str, Check] | None = None, stage: str = "stage"):
        self.config = config
        self.checks: dict[str, Check] = {**CHECKS, **(extra or {})}
        unknown = sorted(set(config.skip) - set(self.checks))
        if unknown:
            raise ConfigError(f"{stage}: guards.skip names unknown check(s) {', '.join(unknown)}; "
                              f"known: {', '.join(self.checks)}")
        from capmill.prompts.templates import load_template

        self.notes: dict[str, str] = load_template("guards", "regenerate").options["notes"]

    @property
    def reasons(self) -> list[str]:
        return [r for r in self.checks if r not in self.config.skip]

    def review(self, text: str, given: GuardInput, skip: frozenset[str] = frozenset()) -> Verdict:
        """Every check that rejects `text`, in run order, with what each found."""
        if not self.config.enabled:
            return PASSED
        reasons, details = [], {}
        for reason, check in self.checks.items():
            if reason in self.config.skip or reason in skip:
                continue
            detail = check(text, given, self.config)
            if detail:
                reasons.append(reason)
                details[reason] = detail
        return Verdict(tuple(reasons), details) if reasons else PASSED

    def stand_in_problem(self, text: str | None) -> str | None:
        """Why an input (such as the AltText) cannot stand in for a rejected output, or None when
        it can: it must have words, hold no instruction to a model, no loop, no markup or code."""
        if not text or not words(text):
            return EMPTY
        if not self.config.enabled:
            return None
        if instruction_signal(text):
            return INJECTION
        if find_loop(text, self.config.loop_repeats, self.config.max_phrase_repeats):
            return LOOP
        if ACTIVE_MARKUP.search(text) or MARKUP.search(text):
            return MARKUP_REASON
        if CODE.search(text):
            return CODE_REASON
        return None

    def retry_note(self, verdict: Verdict, language: str | None = None) -> str:
        """What a regenerated request adds to its prompt: one note per reason, in order."""
        name = next((n.capitalize() for n, c in NAMES.items() if c == language), language or "the expected language")
        notes = []
        for reason in verdict.reasons or ("default",):
            note = self.notes.get(reason, self.notes["default"]).format(language=name)
            if note not in notes:
                notes.append(note)
        return " ".join(notes)


@dataclass
class Guarded:
    """One generated text under review across regeneration rounds."""

    text: str
    given: GuardInput
    owner: Any = None  # the stage's own record of the request (a job, a sample …)
    verdict: Verdict = PASSED
    rejected: list[dict[str, Any]] = field(default_factory=list)
    regenerated: int = 0
    repaired: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verdict.ok

    def reject(self) -> None:
        """Record the current text as rejected, with its verdict."""
        self.rejected.append({"text": self.text[:REJECTED_CHARS], **self.verdict.to_meta()})

    def meta(self, outcome: str | None = None) -> dict[str, Any] | None:
        """`meta["guards"]` of the stored caption: None when the first text passed untouched."""
        if not self.rejected and self.repaired is None and outcome is None:
            return None
        if outcome is None:
            outcome = REPAIRED if self.repaired else REGENERATED
        meta: dict[str, Any] = {"outcome": outcome, "rejected": self.rejected}
        if self.repaired:
            meta["repaired"] = self.repaired
        if self.errors:
            meta["errors"] = self.errors
        return meta


def settle(guard: OutputGuard, items: Sequence[Guarded],
           regenerate: Callable[[list[Guarded]], list[Generation]],
           clean: Callable[[str], str] = str.strip,
           skip_for: Callable[[Guarded], frozenset[str]] | None = None) -> list[Guarded]:
    """Check `items`, regenerate the rejected ones in one `regenerate` call per round, repair
    truncated ends; returns the items still rejected (the stage's fallback decides their fate).

    `regenerate(items)` must return one Generation per item, in order (a failed one keeps the
    earlier text). `skip_for(item)` names checks to leave out for that item's current text (the
    caption stage skips `truncated` for a text its length policy will cut anyway)."""

    def review(item: Guarded) -> None:
        item.verdict = guard.review(item.text, item.given, skip_for(item) if skip_for else frozenset())

    for item in items:
        review(item)
    failing = [item for item in items if not item.ok]
    for _ in range(guard.config.regenerate if guard.config.enabled else 0):
        if not failing:
            break
        generations = regenerate(failing)
        for item, gen in zip(failing, generations, strict=True):
            item.regenerated += 1
            text = clean(gen.texts[0]) if gen.ok and gen.texts and gen.texts[0].strip() else ""
            if not text:
                item.errors.append(gen.error or "empty answer")
                continue
            item.reject()
            item.text = text
            item.given.finish = finish_reason(gen.meta)
            review(item)
        failing = [item for item in failing if not item.ok]
    still = []
    for item in failing:
        if item.verdict.reasons == (TRUNCATED,):
            repaired = repair_truncated(item.text)
            if repaired is not None:
                verdict = guard.review(repaired, item.given, frozenset({TRUNCATED}))
                if verdict.ok:
                    item.reject()
                    item.text, item.verdict, item.repaired = repaired, PASSED, TRUNCATED
                    continue
        still.append(item)
    return still


def alt_text_stand_in(alt_text: str | None, max_chars: int = 1000) -> tuple[str | None, str | None]:
    """(the AltText cleaned to stand in for a missing output, None) or (None, why it cannot):
    it must have words and hold no instruction, loop, markup or code, checked with the default
    guards. The rule a stage follows when none of its model outputs survived."""
    from capmill.prompts.safety import clean_text, source_text

    problem = OutputGuard(GuardConfig()).stand_in_problem(source_text(alt_text, max_chars))
    if problem is not None:
        return None, problem
    return clean_text(alt_text or "", max_chars), None


NO_CANDIDATE = "no_candidate"


def no_candidate(sample: Any, key: str, stage: str) -> None:
    """A ranking or judging stage found no candidate that can compete (all missing, empty or
    flagged by the guards): the AltText stands in for the chosen caption when it can, with
    `meta["fallback"] = "no_candidate"` (counted by the run's stats and the export mix), else the
    sample is dropped saying why."""
    from capmill.sample import DROPPED as DROPPED_STATUS
    from capmill.sample import Caption

    text, problem = alt_text_stand_in(sample.alt_text)
    if text:
        sample.captions[key] = Caption(text=text, source=key, model=None,
                                       meta={"fallback": NO_CANDIDATE, "chosen": "alt_text", "top": [], "candidates": []})
        return
    sample.status, sample.error = DROPPED_STATUS, f"{stage}: no candidate (all missing, empty or flagged) and the AltText cannot stand in"
