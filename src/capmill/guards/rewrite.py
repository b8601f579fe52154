"""An LLM rewriting given texts into one caption, under the output guards: the loop that `fuse`
(AltText + caption, CapsFusion) and `refine` (the best candidates, Bianco et al.; the judge's
winner, MLBCAP) share.

A stage builds one `RewriteJob` per sample: its chat request (every input text entered the prompt
through `capmill.prompts.untrusted`), what the output is checked against (`GuardInput`: the
inputs as sources, the instructions, the language) and the text it keeps when the output is
refused. `rewrite` sends every request of the batch in one backend call, checks every output,
asks again for all the rejected ones in one call per round (each with the guard's note added to
its last message), and returns one `Rewritten` per job:

- the model's text, with the guards' record when it took a regeneration or a repair;
- the fallback text, naming why (`fallback`: the first guard reason, or `backend_error` when the
  model failed on the request) with the rejected output and every verdict;
- nothing for a job whose sample became `transient_error` (a server down or a timeout): no
  fallback is stored as if it were the result, and the sample is redone as a whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from capmill.guards.guard import FALLBACK, Guarded, OutputGuard, finish_reason, settle
from capmill.sample import BACKEND_ERROR, TRANSIENT_ERROR

if TYPE_CHECKING:
    from capmill.backends.base import ChatRequest, Generation, LanguageModel
    from capmill.guards.checks import GuardInput
    from capmill.sample import Sample


@dataclass
class RewriteJob:
    sample: Sample
    request: ChatRequest
    given: GuardInput
    # The text kept when the output is rejected or the model fails on the request.
    fallback: str
    # The stage's own record of the job (its inputs), handed back untouched.
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rewritten:
    job: RewriteJob
    text: str
    # Why the fallback text was kept (None: `text` is the model's).
    fallback: str | None = None
    rejected: str | None = None
    error: str | None = None
    backend_meta: dict[str, Any] = field(default_factory=dict)
    guards: dict[str, Any] | None = None


def rewrite(backend: LanguageModel, guard: OutputGuard, jobs: list[RewriteJob], label: str,
            clean: Callable[[str], str] = str.strip) -> list[Rewritten]:
    """Run `jobs` through `backend` under `guard` (see the module docstring); `label` names the
    stage's output in a transient sample's error."""
    if not jobs:
        return []
    done: list[Rewritten] = []
    items: list[Guarded] = []
    for job, gen in zip(jobs, backend.chat([j.request for j in jobs]), strict=True):
        if not gen.ok and gen.transient:
            job.sample.fail(TRANSIENT_ERROR, f"{label}: {gen.error}")
            continue
        if not gen.ok:
            done.append(Rewritten(job, job.fallback, fallback=BACKEND_ERROR, error=gen.error or "no text"))
            continue
        job.given.finish = finish_reason(gen.meta)
        items.append(Guarded(clean(gen.texts[0]), job.given, owner={"job": job, "meta": gen.meta}))

    def regenerate(again: list[Guarded]) -> list[Generation]:
        from capmill.backends.base import ChatRequest

        requests = []
        for item in again:
            base = item.owner["job"].request
            messages = [dict(m) for m in base.messages]
            note = guard.retry_note(item.verdict, item.given.language)
            messages[-1]["content"] = f"{messages[-1]['content']}\n\n{note}"
            requests.append(ChatRequest(messages=messages, n=base.n, params=base.params,
                                        tag=f"{base.tag}#retry{item.regenerated + 1}"))
        generations = backend.chat(requests)
        for item, gen in zip(again, generations, strict=True):
            if gen.ok:
                item.owner["meta"] = gen.meta
            elif gen.transient:  # not a verdict on the output: the sample is redone as a whole
                item.owner["job"].sample.fail(TRANSIENT_ERROR, f"{label}: {gen.error}")
        return generations

    # Rejected outputs of the whole batch go back together, one backend call per round.
    settle(guard, items, regenerate, clean=clean)
    for item in items:
        job = item.owner["job"]
        if job.sample.status == TRANSIENT_ERROR:
            continue
        if item.ok:
            done.append(Rewritten(job, item.text, backend_meta=item.owner["meta"], guards=item.meta()))
        else:
            item.reject()
            done.append(Rewritten(job, job.fallback, fallback=item.verdict.reason, rejected=item.text,
                                  guards=item.meta(FALLBACK)))
    order = {id(j): i for i, j in enumerate(jobs)}
    return sorted(done, key=lambda r: order[id(r.job)])


def clean_output(text: str) -> str:
    """A rewritten caption without surrounding whitespace, quotes, or a leading label the LLM added."""
    text = text.strip()
    for label in ("caption:", "fused caption:", "new caption:", "rewritten caption:", "merged caption:",
                  "improved caption:"):
        if text.lower().startswith(label):
            text = text[len(label):].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    return text
