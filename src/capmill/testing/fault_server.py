"""A local OpenAI-compatible server that misbehaves on purpose. A documented test double.

It answers `POST /v1/chat/completions` and `GET /v1/models` on 127.0.0.1 (an ephemeral port)
and, at configured rates, answers instead with one of the faults a real endpoint shows under
load: 429 with `Retry-After`, 500, an answer slower than the client's deadline, a body cut off
mid-JSON, or a refusal. It counts requests per prompt (and images, see `request_id`) so a test can check that no
request was retried past its budget, and it logs every request's outcome with its arrival time.

Faults are drawn from a seeded hash of (prompt, attempt number), so the same run meets the same
faults in any order of arrival. Its answers carry no meaning: a short text derived from a hash
of the prompt, naming how many images it received.

    with FaultServer(Faults(rate_limit=0.1, server_error=0.1), latency_s=0.01) as server:
        backend = {"type": "openai", "base_url": server.base_url, "model": server.model}
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

OUTCOMES = ("rate_limit", "server_error", "slow", "truncated", "refusal")


@dataclass
class Faults:
    """Probability of each fault per request; the rest are answered normally."""

    rate_limit: float = 0.0  # 429 with Retry-After: retry_after_s
    retry_after_s: float = 1.0
    server_error: float = 0.0  # 500
    slow: float = 0.0  # answer only after slow_s (past a client's deadline)
    slow_s: float = 5.0
    truncated: float = 0.0  # 200 whose JSON body is cut in half
    refusal: float = 0.0  # 200 with `message.refusal` set and no content

    def __post_init__(self) -> None:
        total = sum(getattr(self, name) for name in OUTCOMES)
        if total > 1:
            raise ValueError(f"fault rates add up to {total} > 1")

    def draw(self, u: float) -> str:
        for name in OUTCOMES:
            rate = getattr(self, name)
            if u < rate:
                return name
            u -= rate
        return "ok"


@dataclass(slots=True)
class Event:
    prompt: str  # request_id(): the prompt text, plus an image digest for image requests
    outcome: str
    t: float  # time.monotonic() at arrival
    n: int = 1
    images: list[tuple[int, int]] = field(default_factory=list)


def prompt_of(messages: list[dict[str, Any]]) -> str:
    """The text of the last user turn: the identity a test counts requests by."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return "\n".join(part.get("text", "") for part in content if part.get("type") == "text")
    return ""


def request_id(messages: list[dict[str, Any]]) -> str:
    """What a test counts requests by: the last user turn's text, plus a digest of the images
    when there are any (caption prompts are the same for every image)."""
    urls = [part["image_url"]["url"] for m in messages if isinstance(m.get("content"), list)
            for part in m["content"] if part.get("type") == "image_url"]
    prompt = prompt_of(messages)
    if not urls:
        return prompt
    return f"{prompt} #{hashlib.sha256(chr(0).join(urls).encode()).hexdigest()[:12]}"


def answer_text(prompt: str, index: int, images: int) -> str:
    digest = hashlib.sha256(f"{prompt}#{index}".encode()).hexdigest()[:8]
    return f"A test answer {digest} about {images} image{'s' if images != 1 else ''}."


def add_logprobs(payload: dict[str, Any]) -> None:
    """First-token log-probabilities for each choice, as chat-completions returns them: the
    answer's first word at -0.1; for a yes or no answer the opposite word follows at -2.4 (so a
    "Yes" answer reads P(yes) ≈ 0.91)."""
    for choice in payload["choices"]:
        words = (choice["message"].get("content") or "").split()
        if not words:
            continue
        first = words[0]
        top = [{"token": first, "logprob": -0.1}]
        plain = first.strip(".,!").lower()
        if plain in ("yes", "no"):
            top.append({"token": "No" if plain == "yes" else "Yes", "logprob": -2.4})
        choice["logprobs"] = {"content": [{"token": first, "logprob": -0.1, "top_logprobs": top}]}


class FaultServer:
    def __init__(self, faults: Faults | None = None, *, latency_s: float = 0.0, model: str = "fault-model",
                 api_key: str | None = None, honour_n: bool = True, seed: int = 0, leak_auth: bool = False,
                 port: int = 0, logprobs: bool = True):
        self.faults = faults or Faults()
        self.latency_s = latency_s
        self.model = model
        self.api_key = api_key
        # False emulates servers that ignore `n` and always return one choice.
        self.honour_n = honour_n
        self.seed = seed
        # True emulates a careless proxy that quotes the request's Authorization header in its
        # error bodies, so a test can check the client scrubs the key from what it reports.
        self.leak_auth = leak_auth
        # False emulates servers that ignore `logprobs` (no log-probabilities in their answers).
        self.logprobs = logprobs
        self.counts: Counter[str] = Counter()
        self.events: list[Event] = []
        # 0: an ephemeral port. A fixed one lets a test kill the server and start it again at the
        # same address (the client's config, and so the run's config hash, stay the same).
        self._bind_port = port
        self.port: int | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> FaultServer:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-server", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._loop = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.events.clear()

    async def _start(self) -> None:
        from aiohttp import web

        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        # handler_cancellation: a slow answer stops when its client gives up; short shutdown
        # timeout so stop() does not wait for abandoned slow answers.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        # A backlog above any client concurrency we test: a full backlog drops SYNs, which the
        # client retries only after a second.
        site = web.TCPSite(self._runner, "127.0.0.1", self._bind_port, backlog=1024, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    # ---- handlers --------------------------------------------------------------------------

    def _authorised(self, request: Any) -> bool:
        return self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _models(self, request: Any) -> Any:
        from aiohttp import web

        if not self._authorised(request):
            return web.json_response({"error": {"message": "invalid API key"}}, status=401)
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _chat(self, request: Any) -> Any:
        from aiohttp import web

        arrival = time.monotonic()
        if not self._authorised(request):
            return web.json_response({"error": {"message": "invalid API key"}}, status=401)
        try:
            body = await request.json()
            messages = body["messages"]
            prompt = request_id(messages)
            images = [self._image_size(part["image_url"]["url"]) for m in messages
                      if isinstance(m.get("content"), list) for part in m["content"] if part.get("type") == "image_url"]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            return web.json_response({"error": {"message": f"bad request: {type(e).__name__}: {e}"}}, status=400)
        n = int(body.get("n") or 1) if self.honour_n else 1
        with self._lock:
            attempt = self.counts[prompt]
            self.counts[prompt] += 1
            outcome = self.faults.draw(random.Random(f"{self.seed}|{prompt}|{attempt}").random())
            self.events.append(Event(prompt, outcome, arrival, n, images))
        if body.get("model") != self.model:
            return web.json_response({"error": {"message": f"model {body.get('model')!r} does not exist"}}, status=404)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if outcome == "rate_limit":
            return web.json_response({"error": {"message": "rate limited"}}, status=429,
                                     headers={"Retry-After": f"{self.faults.retry_after_s:g}"})
        if outcome == "server_error":
            detail = f" (request had Authorization: {request.headers.get('Authorization')})" if self.leak_auth else ""
            return web.json_response({"error": {"message": "internal error" + detail}}, status=500)
        if outcome == "slow":
            await asyncio.sleep(self.faults.slow_s)
        payload = self._completion(prompt, n, len(images), refused=outcome == "refusal")
        if body.get("max_tokens") == 1 or body.get("max_completion_tokens") == 1:
            for choice in payload["choices"]:  # one token asked for: the answer's first word
                content = choice["message"].get("content")
                if content:
                    choice["message"]["content"] = content.split()[0]
                    choice["finish_reason"] = "length"
        if body.get("logprobs") and self.logprobs:
            add_logprobs(payload)
        text = json.dumps(payload)
        if outcome == "truncated":
            text = text[: len(text) // 2]
        return web.Response(text=text, content_type="application/json")

    def _completion(self, prompt: str, n: int, images: int, refused: bool) -> dict[str, Any]:
        if refused:
            message = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
            choices = [{"index": 0, "message": message, "finish_reason": "stop"}]
        else:
            choices = [{"index": i, "message": {"role": "assistant", "content": answer_text(prompt, i, images)},
                        "finish_reason": "stop"} for i in range(n)]
        return {"id": "chatcmpl-fault", "object": "chat.completion", "created": int(time.time()), "model": self.model,
                "choices": choices, "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 8 * n}}

    @staticmethod
    def _image_size(url: str) -> tuple[int, int]:
        """Decode a data-URL image for real, so a client sending broken images is caught."""
        from PIL import Image

        header, _, data = url.partition(",")
        if not header.startswith("data:image/") or not header.endswith(";base64"):
            raise ValueError(f"not a base64 image data URL: {header[:40]!r}")
        with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as img:
            img.load()
            return img.size


def main(argv: list[str] | None = None) -> int:
    """`python -m capmill.testing.fault_server [--latency S] [--rate-limit P] ...`: serve until
    interrupted, printing the base URL first (benchmarks run it in its own process so that the
    server does not share the client's interpreter)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before every answer")
    parser.add_argument("--model", default="fault-model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--retry-after", type=float, default=1.0, help="seconds a 429 answer asks the client to wait")
    for name in OUTCOMES:
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=0.0, help=f"rate of {name} faults")
    args = parser.parse_args(argv)
    faults = Faults(**{name: getattr(args, name) for name in OUTCOMES}, retry_after_s=args.retry_after)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FaultServer(faults, latency_s=args.latency, model=args.model, seed=args.seed, port=args.port) as server:
        print(server.base_url, flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
