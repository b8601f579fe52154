"""The model steps the verifying stages share: batched, parsed, retried once, guarded.

Every LLM step whose answer must be read (a list of objects, claims, a merge) goes through
`chat_parsed`: all requests of a batch in one `chat` call; the answers that did not parse (or
failed) are asked once more together, with a note restating the format; what still does not
parse comes back as a `Parsed` without a value and with the reason, for the stage to fall back.

Every text a verifying stage writes goes through the output guards (`capmill.guards`):
- intermediate texts (a region's caption, a VLM's answer about an object) through `review`: a
  rejected one is left out of what the next step sees and recorded with its reasons;
- the stored caption through `settle_captions`: rejected ones are regenerated in one call per
  round (the guard config's `regenerate`), and what is still rejected falls back to the stage's
  previous caption with the reason in `meta["fallback"]` and the verdicts in `meta["guards"]`;
  `store_captions` settles them and stores each, or leaves its sample for the rerun when the
  model failed transiently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import Field

from capmill.backends.base import ChatRequest, Generation
from capmill.guards import FALLBACK, GuardConfig, Guarded, GuardInput, OutputGuard, finish_reason, settle
from capmill.guards.fuse import OFF_TOPIC, check_off_topic
from capmill.guards.language import detect
from capmill.prompts.safety import without_untrusted
from capmill.sample import TRANSIENT_ERROR

if TYPE_CHECKING:
    from capmill.backends.base import LanguageModel

T = TypeVar("T")


class VerifyGuardConfig(GuardConfig):
    """Guards of the verifying stages: the generic ones, plus `off_topic` on the caption that
    scalecap, patch_matters and fusecap store: it rewrites an earlier caption and must keep some
    of its content (an answer to an instruction printed in the image or hidden in the AltText
    keeps none of it). vfc writes from checked facts in any style, so it is not held to it."""

    # Off topic: the stored caption keeps less than this share of the earlier caption's content words.
    min_caption_overlap: float = Field(0.2, ge=0, le=1)


# Checks run after the generic ones, on the texts whose GuardInput names a "caption" source.
VERIFY_CHECKS = {OFF_TOPIC: check_off_topic}


def verify_guard(config: VerifyGuardConfig, stage: str) -> OutputGuard:
    return OutputGuard(config, extra=VERIFY_CHECKS, stage=stage)

UNPARSED, NO_ANSWER = "unparsed", "no_answer"


@dataclass
class Parsed(Generic[T]):
    value: T | None = None
    reason: str | None = None  # why there is no value: "unparsed" or "no_answer: <backend error>"
    attempts: int = 0
    raw: list[str] = field(default_factory=list)  # the answers that did not parse, cut short
    transient: bool = False  # the last attempt failed in a way asking again later may fix

    @property
    def ok(self) -> bool:
        return self.value is not None


def with_note(request: ChatRequest, note: str, attempt: int) -> ChatRequest:
    messages = [dict(m) for m in request.messages]
    messages[-1]["content"] = f"{messages[-1]['content']}\n\n{note}"
    return ChatRequest(messages=messages, n=request.n, params=request.params, tag=f"{request.tag}#retry{attempt}")


def chat_parsed(backend: LanguageModel, requests: list[ChatRequest], parse: Callable[[str], T | None],
                retry_note: str, retries: int = 1) -> list[Parsed[T]]:
    """Ask every request in one call, re-ask the unparsed ones together (`retries` rounds, each
    request with `retry_note` appended), and return one `Parsed` per request, in order."""
    out: list[Parsed[T]] = [Parsed() for _ in requests]
    pending = list(range(len(requests)))
    for attempt in range(retries + 1):
        if not pending:
            break
        batch = [requests[i] if attempt == 0 else with_note(requests[i], retry_note, attempt) for i in pending]
        still = []
        for i, gen in zip(pending, backend.chat(batch), strict=True):
            result = out[i]
            result.attempts += 1
            if not gen.ok:
                result.reason = f"{NO_ANSWER}: {gen.error or 'empty answer'}"
                result.transient = bool(getattr(gen, "transient", False))
                still.append(i)
                continue
            result.transient = False
            value = parse(gen.texts[0])
            if value is None:
                result.reason = UNPARSED
                result.raw.append(gen.texts[0][:300])
                still.append(i)
                continue
            result.value, result.reason = value, None
        pending = still
    return out


def prompt_of(request: ChatRequest) -> str:
    """The instructions capmill wrote in `request` (untrusted blocks cut out), for the echo check."""
    return without_untrusted("\n".join(m["content"] for m in request.messages))


def review(guard: OutputGuard, text: str, sources: dict[str, str], prompt: str, meta: dict[str, Any] | None,
           language: str | None, skip: frozenset[str] = frozenset()) -> str | None:
    """The first reason the guards reject an intermediate text, or None when it passes. `skip`
    names checks that do not fit the text (a short phrase is no truncated sentence)."""
    given = GuardInput(sources={k: v for k, v in sources.items() if v}, prompt=prompt,
                       finish=finish_reason(meta), language=language)
    return guard.review(text, given, skip).reason


def expected_language(guard: OutputGuard, *texts: str) -> str | None:
    """The language the guards expect of a text written from `texts`: the configured one, else
    the language the first of them that tells is in, else English (the language of the built-in
    prompts, which is what a model answers in unless something told it otherwise). None: the
    guards' `language: null`, not checked."""
    wanted = guard.config.language
    if wanted is None:
        return None
    if wanted != "auto":
        return wanted
    for text in texts:
        code = detect(text or "")
        if code:
            return code
    return "en"


@dataclass
class FinalJob:
    """One caption a stage is about to store: its request, the answer, and what it fell back to."""

    request: ChatRequest
    generation: Generation
    sources: dict[str, str]  # what the caption may draw on (for the guards)
    previous: str  # the caption kept when this one is rejected
    owner: Any = None
    language: str | None = None
    sample: Any = None  # the Sample the caption is for (store_captions fails it on a transient error)
    meta: dict[str, Any] | None = None  # the caption's meta: store_captions adds what was rejected


@dataclass
class Settled:
    text: str
    fallback: str | None  # None: the generated caption was kept
    guards: dict[str, Any] | None
    rejected: str | None = None
    backend_meta: dict[str, Any] = field(default_factory=dict)
    transient: bool = False  # the LLM failed transiently: nothing is stored, the sample is redone


def settle_captions(guard: OutputGuard, backend: LanguageModel, jobs: list[FinalJob],
                    clean: Callable[[str], str] = str.strip) -> list[Settled]:
    """Guard every final caption of a batch (see the module docstring); one `Settled` per job."""
    out: list[Settled | None] = [None] * len(jobs)
    items: list[Guarded] = []
    for k, job in enumerate(jobs):
        gen = job.generation
        if not gen.ok:
            out[k] = Settled(text=job.previous, fallback="backend_error", guards=None,
                             backend_meta={"error": gen.error or "no text"}, transient=bool(gen.transient))
            continue
        given = GuardInput(sources={n: t for n, t in job.sources.items() if t}, prompt=prompt_of(job.request),
                           finish=finish_reason(gen.meta), language=job.language, grounded=True)
        items.append(Guarded(clean(gen.texts[0]), given, owner={"index": k, "request": job.request, "meta": gen.meta}))

    def regenerate(again: list[Guarded]) -> list[Generation]:
        requests = [with_note(i.owner["request"], guard.retry_note(i.verdict, i.given.language), i.regenerated + 1)
                    for i in again]
        generations = backend.chat(requests)
        for item, gen in zip(again, generations, strict=True):
            if gen.ok:
                item.owner["meta"] = gen.meta
        return generations

    failing = {id(item) for item in settle(guard, items, regenerate, clean=clean)}
    for item in items:
        k = item.owner["index"]
        if id(item) in failing:
            item.reject()
            out[k] = Settled(text=jobs[k].previous, fallback=item.verdict.reason, guards=item.meta(FALLBACK),
                             rejected=item.text[:500])
        else:
            out[k] = Settled(text=item.text, fallback=None, guards=item.meta(), backend_meta=dict(item.owner["meta"]))
    return out  # type: ignore[return-value]


def store_captions(stage: str, guard: OutputGuard, backend: LanguageModel, jobs: list[FinalJob],
                   store: Callable[[Any, Settled], None]) -> None:
    """Settle each job's caption and `store(job.owner, settled)` it; the rejected text and the
    model's error go into `job.meta`. A transient model failure stores nothing: the sample fails
    as TRANSIENT_ERROR and the rerun redoes it as a whole."""
    for job, settled in zip(jobs, settle_captions(guard, backend, jobs, clean_caption), strict=True):
        if settled.transient:  # not a verdict on the caption
            job.sample.fail(TRANSIENT_ERROR, f"{stage}: {settled.backend_meta.get('error')}")
            continue
        meta = job.meta if job.meta is not None else {}
        if settled.rejected is not None:
            meta["rejected"] = settled.rejected
        if settled.backend_meta.get("error"):
            meta["error"] = settled.backend_meta["error"]
        store(job.owner, settled)


def clean_caption(text: str) -> str:
    """The caption without surrounding whitespace and quotes, or a leading "Caption:" label."""
    text = text.strip()
    head, _, rest = text.partition(":")
    if rest and len(head.split()) <= 3 and head.strip().lower().endswith(("caption", "description")):
        text = rest.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    return text


def chat_request(template: Any, slots: dict[str, Any], params: Any, tag: str) -> ChatRequest:
    """A chat request from a template: its system part (if any), then its user part."""
    system = template.render_system(**slots)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": template.render(**slots)}]
    return ChatRequest(messages=messages, params=params, tag=tag)


def bullet_block(items: list[str]) -> str:
    """Items as "- item" lines; "(none)" for an empty list. The result is untrusted text: callers
    wrap it with `untrusted`, which puts it on one line."""
    return " ".join(f"- {item}" for item in items) if items else "(none)"


def failure_status(result: Any) -> str:
    """The status of a sample whose model step failed: `transient_error` when asking again later
    may succeed (the sample is redone, nothing is stored), else `backend_error`."""
    from capmill.sample import BACKEND_ERROR, TRANSIENT_ERROR

    return TRANSIENT_ERROR if getattr(result, "transient", False) else BACKEND_ERROR
