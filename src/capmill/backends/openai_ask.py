"""Yes/no answers (`ask`) over an OpenAI-compatible chat-completions server.

`AskMixin` gives `OpenAIChatBackend` its `ask`: each question is a one-token, greedy request
with `logprobs: true` and `top_logprobs` (the config's, 20 by default), all questions of a call
concurrently through the backend's usual retrying `_complete`; P("yes") is read from the first
token's top log-probabilities (`common.yes_probability`). Servers that return no
log-probabilities (some hosted APIs, older servers) are answered from the generated word
(`ask_without_logprobs: text`, P(yes) 1.0 or 0.0 with `source: "text"`) or fail each such
question (`ask_without_logprobs: error`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from capmill.backends.base import Answer, AskRequest, VLMRequest
from capmill.backends.common import per_image_once, yes_probability
from capmill.errors import SetupError


def first_token_logprobs(payload: Any) -> list[dict[str, float] | None]:
    """Per choice, the top log-probabilities of its first generated token (chat-completions
    `logprobs.content[0].top_logprobs`, the chosen token included), or None where absent."""
    out: list[dict[str, float] | None] = []
    choices = payload.get("choices") if isinstance(payload, dict) else None
    for choice in choices if isinstance(choices, list) else []:
        content = ((choice or {}).get("logprobs") or {}).get("content") if isinstance(choice, dict) else None
        if not isinstance(content, list) or not content or not isinstance(content[0], dict):
            out.append(None)
            continue
        first = content[0]
        top: dict[str, float] = {}
        for entry in [first, *(first.get("top_logprobs") or [])]:
            if isinstance(entry, dict) and isinstance(entry.get("token"), str) and isinstance(entry.get("logprob"), (int, float)):
                top.setdefault(entry["token"], float(entry["logprob"]))
        out.append(top or None)
    return out


class AskMixin:
    """`ask` for OpenAIChatBackend (which provides `config`, `_runner` and `_complete`)."""

    def ask(self, requests: list[AskRequest]) -> list[Answer]:
        """P("yes") for each yes/no question: one-token answers with `top_logprobs`, all questions
        of the call concurrently; see `top_logprobs` and `ask_without_logprobs` in the config."""
        from capmill.backends import openai_http as http

        if self._runner is None:
            raise SetupError("the openai backend is not loaded: call load() first")
        cfg = self.config
        vlm = [VLMRequest(prompt=r.question, images=[r.image], tag=r.tag) for r in requests]
        urls = per_image_once(vlm, lambda img: http.image_data_url(img, cfg.image_format, cfg.image_quality, cfg.max_pixels))
        messages = [http.vlm_messages(r, u, cfg.special_tokens) for r, u in zip(vlm, urls, strict=True)]
        if not messages:
            return []
        return self._runner.call(self._gather_ask(messages, [r.tag for r in requests]))

    async def _gather_ask(self, messages: list[list[dict[str, Any]]], tags: list[str]) -> list[Answer]:
        return list(await asyncio.gather(*(self._ask_one(m, tag) for m, tag in zip(messages, tags, strict=True))))

    async def _ask_one(self, messages: list[dict[str, Any]], tag: str) -> Answer:
        cfg = self.config
        body = {"model": cfg.model, "messages": messages, cfg.max_tokens_field: 1, "temperature": 0.0,
                "logprobs": True, "top_logprobs": cfg.top_logprobs, **cfg.extra_body}
        if cfg.params.seed is not None:
            body["seed"] = cfg.params.seed
        answer = await self._complete(body, tag)
        if answer.error is not None:
            return Answer(p_yes=None, error=answer.error, meta={"attempts": answer.attempts}, transient=answer.transient)
        top = answer.logprobs[0] if answer.logprobs else None
        p = yes_probability(top) if top else None
        if p is not None:
            return Answer(p_yes=p, source="logprobs", meta={"attempts": answer.attempts})
        if cfg.ask_without_logprobs == "error":
            return Answer(p_yes=None, error="the server returned no log-probabilities for yes or no "
                          "(set ask_without_logprobs: text to use the generated word)")
        word = (answer.texts[0] if answer.texts else "").strip().lower().strip(".,!*")
        if word in ("yes", "no"):
            return Answer(p_yes=1.0 if word == "yes" else 0.0, source="text", meta={"attempts": answer.attempts})
        return Answer(p_yes=None, error=f"answer is neither yes nor no: {word[:40]!r}")
