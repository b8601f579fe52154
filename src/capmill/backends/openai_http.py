"""OpenAI-compatible chat-completions backend (`type: openai`): vLLM serve, SGLang, Ollama,
llama.cpp server and hosted APIs.

A batch of requests goes out concurrently (at most `concurrency` in flight) from an asyncio
loop that the backend runs in its own thread, so the stage calling `generate` from an ordinary
thread simply blocks until the whole batch is answered, however often it calls.

Per logical request (one `VLMRequest`/`ChatRequest`):
- 429, 408 and 5xx answers, timeouts, dropped connections and malformed or truncated bodies
  are retried with exponential backoff and jitter; a `Retry-After` header replaces the backoff
  for that wait;
- at most `max_retries` retries, never more, and never past `deadline_s` (counted from the first
  attempt, so time spent queueing behind our own concurrency limit does not count); a request
  that runs out of either fails *transiently* (`Generation.transient`): the sample is retryable;
- 401, 403 and 404 are not retried (asking again at once would not help) but are transient too:
  a key or a served model that changed under a running job is fixed by the operator, not by
  the data;
- a refusal, a content filter or any other 4xx (the server rejects the request as it is) is a
  final `Generation.error` (the sample's `backend_error`), not retried: the server would say
  the same again.

The API key is read from the environment variable named by `api_key_env`; it is sent only as
the `Authorization` header and is scrubbed from every error text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from capmill.backends.base import ChatRequest, Generation, GenerationParams, VLMRequest
from capmill.backends.common import frames_as_images, neutralise_for, per_image_once
from capmill.backends.openai_ask import AskMixin, first_token_logprobs
from capmill.backends.openai_wire import (
    RETRY_STATUS,
    TRANSIENT_STATUS,
    FinalError,
    MalformedError,
    RetryableError,
    TransientError,
    backoff_delay,
    image_data_url,
    input_audio,
    parse_completion,
    retry_after_seconds,
    sampling_fields,
    video_data_url,
    vlm_messages,
)
from capmill.components import BackendConfig
from capmill.errors import SetupError

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("capmill.backends.openai")

class OpenAIBackendConfig(BackendConfig):
    type: Literal["openai"] = "openai"
    # The API root, ending in /v1 for most servers (vLLM, SGLang, Ollama, OpenAI).
    base_url: str = "http://127.0.0.1:8000/v1"
    # The model name the server knows (vLLM: the path or id given to `vllm serve`, or its
    # --served-model-name).
    model: str
    # Name of the environment variable holding the API key; None sends no key. The key itself
    # never appears in a config, so configs can be shared and logged.
    api_key_env: str | None = None
    # Requests in flight at once. A local vLLM/SGLang batches them on the GPU, so this is its
    # effective batch size; hosted APIs limit it through their rate limits.
    concurrency: int = Field(16, ge=1)
    # One attempt may take this long before it is abandoned and retried.
    attempt_timeout_s: float = Field(120.0, gt=0)
    # Total time for one request, retries and waits included, from its first attempt.
    deadline_s: float = Field(600.0, gt=0)
    # Retries per request after the first attempt (the retry budget).
    max_retries: int = Field(4, ge=0)
    # Backoff before retry k is about backoff_s * 2**k (jittered, capped at backoff_max_s).
    backoff_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    # How `n` candidates are asked for: `api` sends the API's `n`; `separate` sends n requests
    # with seeds seed, seed+1, ...; `auto` sends `n` and, when a server returns fewer choices
    # (Ollama and some hosted APIs ignore `n`), asks for the missing ones separately from then on.
    n_candidates: Literal["auto", "api", "separate"] = "auto"
    # Images travel inline as base64 data URLs in this format.
    image_format: Literal["jpeg", "png", "webp"] = "jpeg"
    image_quality: int = Field(90, ge=1, le=100)
    # Downscale images above this many pixels before sending (None: send as decoded). Servers
    # resize again to their model's budget; this only bounds the upload.
    max_pixels: int | None = Field(None, ge=1)
    # How a video is sent: "frames" (its sampled frames as images, their timestamps in the text;
    # any vision server) or "video_url" (the video or clip file as a data URL, for servers that
    # take videos, e.g. `vllm serve` with a Qwen2-VL-family model; the server samples frames).
    video_as: Literal["frames", "video_url"] = "frames"
    # Largest video file sent as a data URL.
    max_video_bytes: int = Field(64 * 1024 * 1024, ge=1)
    # Audio goes as an `input_audio` part (what OpenAI's audio models and `vllm serve` with an
    # audio-language model take): the sample's decoded window, as 16-bit mono WAV at this rate.
    audio_rate: int = Field(16000, ge=8000, le=48000)
    # Largest audio sent (base64 adds a third on top).
    max_audio_bytes: int = Field(25 * 1024 * 1024, ge=1)
    # Default decoding settings; a request's own params replace them.
    params: GenerationParams = Field(default_factory=GenerationParams)
    # The field that caps output length: `max_tokens` (vLLM, SGLang, Ollama, most APIs) or
    # `max_completion_tokens` (newer OpenAI models, which reject `max_tokens`).
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    # Extra fields merged into every request body (e.g. {top_k: 20} for vLLM, or
    # {chat_template_kwargs: {enable_thinking: false}}).
    extra_body: dict[str, Any] = Field(default_factory=dict)
    # Extra, non-secret HTTP headers. Keys go through api_key_env only.
    headers: dict[str, str] = Field(default_factory=dict)
    # The server's tokenizer is out of reach, so every text sent has the special-token shapes of
    # the common model families broken (`<|im_start|>` → `‹¦im_start¦›`, see prompts/safety.py),
    # plus any model-specific tokens listed here. A chat marker or image placeholder inside an
    # AltText would otherwise reach the server's tokenizer as the real token (one `<|image_pad|>`
    # too many crashes a Qwen2.5-VL worker in vLLM).
    special_tokens: list[str] = Field(default_factory=list)
    # `ask` (yes/no questions) reads the first answer token's `top_logprobs` (this many). A server
    # that returns no log-probabilities is answered from the generated word ("text": P(yes) is 1.0
    # or 0.0, marked `source: text`) or each such question fails ("error").
    top_logprobs: int = Field(20, ge=1, le=20)
    ask_without_logprobs: Literal["text", "error"] = "text"
    # Check at load that the server answers and serves `model` (GET /models).
    probe: bool = True
    probe_timeout_s: float = Field(10.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {v!r}")
        return v.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _no_secrets_in_headers(cls, v: dict[str, str]) -> dict[str, str]:
        if any(k.lower() in ("authorization", "api-key", "x-api-key") for k in v):
            raise ValueError("put the API key in an environment variable and name it in api_key_env, not in headers")
        return v

    @model_validator(mode="after")
    def _check_params(self) -> OpenAIBackendConfig:
        if self.backoff_max_s < self.backoff_s:
            raise ValueError("backoff_max_s must be at least backoff_s")
        return self

    def build(self) -> OpenAIChatBackend:
        return OpenAIChatBackend(self)

    def model_ids(self) -> list[str]:
        return [self.model]


@dataclass(slots=True)
class _Answer:
    """The outcome of one HTTP request with its retries."""

    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    error: str | None = None
    transient: bool = False
    attempts: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    # The first token's top log-probabilities of each choice (token → log-prob), when returned.
    logprobs: list[dict[str, float] | None] = field(default_factory=list)


class _LoopThread:
    """An asyncio loop running in a daemon thread; `call` runs a coroutine there and waits."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class OpenAIChatBackend(AskMixin):
    """Implements VisionLanguageModel (with `ask`) and LanguageModel over /chat/completions."""

    def __init__(self, config: OpenAIBackendConfig):
        self.config = config
        self.model_id = config.model
        self._key: str | None = None
        self._runner: _LoopThread | None = None
        self._client: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        # Whether the server honours `n`; None until the first multi-candidate answer says.
        self._n_honoured: bool | None = None
        self._rng = random.Random(config.params.seed)
        # Counters for logs and tests: attempts and retries over the backend's life.
        self.stats = {"requests": 0, "attempts": 0, "retries": 0, "errors": 0}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.config.model!r}, base_url={self.config.base_url!r})"

    # ---- lifecycle -------------------------------------------------------------------------

    def load(self) -> None:
        if self._runner is not None:
            return
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            raise SetupError("the openai backend needs aiohttp: pip install 'capmill[http]'") from None
        cfg = self.config
        if cfg.api_key_env:
            self._key = os.environ.get(cfg.api_key_env) or None
            if self._key is None:
                # Local servers (vLLM, SGLang, Ollama) usually need no key; a server that does
                # answers 401 to the probe below, which then names the variable to set.
                log.warning("environment variable %s is not set; sending requests without an API key", cfg.api_key_env)
        self._runner = _LoopThread(f"capmill-openai-{cfg.model}")
        try:
            self._runner.call(self._open())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._runner is None:
            return
        try:
            if self._client is not None:
                self._runner.call(self._client.close())
        finally:
            self._runner.stop()
            self._runner = self._client = self._slots = None

    async def _open(self) -> None:
        import aiohttp

        cfg = self.config
        headers = {"User-Agent": "capmill", **cfg.headers}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        # One pooled connection per slot, so no request waits for a connection it cannot get.
        # aiohttp rather than httpx: httpcore's pool rescans every connection for every request,
        # which costs more CPU than the requests themselves from a few dozen connections on.
        connector = aiohttp.TCPConnector(limit=cfg.concurrency, limit_per_host=cfg.concurrency)
        self._client = aiohttp.ClientSession(headers=headers, connector=connector,
                                             timeout=aiohttp.ClientTimeout(total=None))
        self._slots = asyncio.Semaphore(cfg.concurrency)
        if cfg.probe:
            await self._probe()

    async def _probe(self) -> None:
        import aiohttp

        cfg = self.config
        try:
            async with asyncio.timeout(cfg.probe_timeout_s):
                async with self._client.get(f"{cfg.base_url}/models") as response:
                    status, text = response.status, await response.text(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise SetupError(
                f"no OpenAI-compatible server answers at {cfg.base_url} ({type(e).__name__}: {self._scrub(str(e))}). "
                f"Start it (for example `vllm serve {cfg.model} --port 8000`) or correct base_url."
            ) from None
        if status in (401, 403):
            hint = (f"check the key in ${cfg.api_key_env}" if self._key else
                    f"set the environment variable {cfg.api_key_env}" if cfg.api_key_env else
                    "name the environment variable holding the key in api_key_env")
            raise SetupError(f"{cfg.base_url} refused access (HTTP {status}): {hint}")
        if status == 404:
            return  # servers without a model listing (some proxies): the first request will tell
        if status >= 400:
            raise SetupError(f"{cfg.base_url}/models answered HTTP {status}: {self._scrub(text[:200])}")
        try:
            served = [m["id"] for m in json.loads(text)["data"]]
        except (ValueError, KeyError, TypeError):
            return  # a listing we cannot read is no reason to refuse to run
        if served and cfg.model not in served:
            shown = ", ".join(served[:20]) + (" …" if len(served) > 20 else "")
            raise SetupError(f"{cfg.base_url} does not serve model {cfg.model!r}; it serves: {shown}")

    # ---- protocol methods ------------------------------------------------------------------

    def generate(self, requests: list[VLMRequest]) -> list[Generation]:
        cfg = self.config
        # A video goes as its frames (an image request with the timestamps in the text) or as
        # the file itself; a file that cannot be sent fails its request only.
        ready, videos, audios, failed = [], [], [], {}
        for i, r in enumerate(requests):
            video_url = audio_part = None
            if r.video is not None and cfg.video_as == "frames":
                r = frames_as_images(r)
            elif r.video is not None:
                try:
                    video_url = video_data_url(r.video, cfg.max_video_bytes)
                except (ValueError, OSError) as e:
                    failed[i] = Generation(error=f"video not sent: {e}", meta={"backend": "openai"})
            if r.audio is not None:
                try:
                    audio_part = input_audio(r.audio, cfg.audio_rate, cfg.max_audio_bytes)
                except ValueError as e:
                    failed[i] = Generation(error=f"audio not sent: {e}", meta={"backend": "openai"})
            ready.append(r)
            videos.append(video_url)
            audios.append(audio_part)
        # Images are encoded here, in the caller's thread, so the event loop only moves bytes.
        urls = per_image_once(ready, lambda img: image_data_url(img, cfg.image_format, cfg.image_quality, cfg.max_pixels))
        todo = [i for i in range(len(ready)) if i not in failed]
        jobs = [(vlm_messages(ready[i], urls[i], cfg.special_tokens, videos[i], audios[i]), ready[i].n, ready[i].params,
                 ready[i].tag) for i in todo]
        out: list[Generation | None] = [failed.get(i) for i in range(len(ready))]
        for i, gen in zip(todo, self._run(jobs) if jobs else [], strict=True):
            out[i] = gen
        return out  # type: ignore[return-value]

    def chat(self, requests: list[ChatRequest]) -> list[Generation]:
        tokens = self.config.special_tokens
        return self._run([([{**m, "content": neutralise_for(m["content"], tokens)} for m in r.messages], r.n, r.params, r.tag)
                          for r in requests])

    def _run(self, jobs: list[tuple[list[dict[str, Any]], int, GenerationParams | None, str]]) -> list[Generation]:
        if self._runner is None:
            raise SetupError("the openai backend is not loaded: call load() first")
        if not jobs:
            return []
        return self._runner.call(self._gather(jobs))

    async def _gather(self, jobs) -> list[Generation]:
        return list(await asyncio.gather(*(self._candidates(m, n, p, tag) for m, n, p, tag in jobs)))

    # ---- one logical request ---------------------------------------------------------------

    async def _candidates(self, messages: list[dict[str, Any]], n: int, params: GenerationParams | None,
                          tag: str) -> Generation:
        cfg = self.config
        params = params or cfg.params
        body = {"model": cfg.model, "messages": messages, **sampling_fields(params, cfg.max_tokens_field),
                **cfg.extra_body}
        use_api_n = n > 1 and (cfg.n_candidates == "api" or (cfg.n_candidates == "auto" and self._n_honoured is not False))
        answers: list[_Answer] = []
        if n == 1 or use_api_n:
            first = await self._complete({**body, "n": n} if n > 1 else body, tag)
            answers.append(first)
            if n > 1 and first.error is None and cfg.n_candidates == "auto":
                self._n_honoured = len(first.texts) >= n
        missing = n - sum(len(a.texts) for a in answers)
        if missing > 0 and not any(a.error for a in answers) and cfg.n_candidates != "api":
            # Separate requests need distinct seeds, or a seeded server returns n copies.
            seed0 = params.seed if params.seed is not None else 0
            extra = await asyncio.gather(*(
                self._complete({**body, **({"seed": seed0 + i} if params.seed is not None else {})}, f"{tag}#{i}")
                for i in range(n - missing, n)
            ))
            answers.extend(extra)
        generation = self._to_generation(answers, n)
        if params.num_beams > 1:
            generation.meta["beams_ignored"] = params.num_beams
        return generation

    def _to_generation(self, answers: list[_Answer], n: int) -> Generation:
        texts = [t for a in answers for t in a.texts][:n]
        meta: dict[str, Any] = {
            "backend": "openai",
            "attempts": sum(a.attempts for a in answers),
            "finish_reasons": [r for a in answers for r in a.finish_reasons][:n],
        }
        usage: dict[str, int] = {}
        for a in answers:
            for k, v in a.usage.items():
                usage[k] = usage.get(k, 0) + v
        if usage:
            meta["usage"] = usage
        failed = [a for a in answers if a.error]
        if failed:
            self.stats["errors"] += 1
            return Generation(texts=[], error=failed[0].error, meta=meta, transient=failed[0].transient)
        return Generation(texts=texts, meta=meta)

    async def _complete(self, body: dict[str, Any], tag: str) -> _Answer:
        """One HTTP request with retries, within the retry budget and the deadline."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        answer = _Answer()
        self.stats["requests"] += 1
        deadline: float | None = None
        last = "no attempt made"
        while True:
            async with self._slots:
                # The deadline starts with the first attempt: waiting for a free slot is our
                # own queueing, not the server's slowness.
                if deadline is None:
                    deadline = loop.time() + cfg.deadline_s
                remaining = deadline - loop.time()
                if remaining <= 0:
                    answer.error = f"deadline of {cfg.deadline_s:g}s passed after {answer.attempts} attempt(s); last: {last}"
                    answer.transient = True
                    return answer
                answer.attempts += 1
                self.stats["attempts"] += 1
                try:
                    answer.texts, answer.finish_reasons, answer.usage, answer.logprobs = await self._attempt(
                        body, min(cfg.attempt_timeout_s, remaining))
                    return answer
                except FinalError as e:
                    answer.error = self._scrub(str(e))
                    return answer
                except TransientError as e:
                    answer.error, answer.transient = self._scrub(str(e)), True
                    return answer
                except RetryableError as e:
                    last, retry_after = self._scrub(e.reason), e.retry_after
            # Out of the slot while waiting, so a backing-off request does not hold up others.
            retries_done = answer.attempts - 1
            if retries_done >= cfg.max_retries:
                answer.error = f"gave up after {answer.attempts} attempt(s) (max_retries={cfg.max_retries}); last: {last}"
                answer.transient = True
                return answer
            delay = retry_after if retry_after is not None else backoff_delay(retries_done, cfg.backoff_s, cfg.backoff_max_s, self._rng)
            remaining = deadline - loop.time()
            if delay >= remaining:
                answer.error = (f"deadline of {cfg.deadline_s:g}s would pass before the next attempt "
                                f"(wait {delay:.1f}s, {max(remaining, 0):.1f}s left) after {answer.attempts} attempt(s); last: {last}")
                answer.transient = True
                return answer
            self.stats["retries"] += 1
            log.debug("retrying %s in %.2fs after: %s", tag, delay, last)
            await asyncio.sleep(delay)

    async def _attempt(self, body: dict[str, Any], timeout: float) -> tuple[list[str], list[str | None], dict[str, int], list]:
        import aiohttp

        try:
            # The whole exchange, body included, within the attempt's time.
            async with asyncio.timeout(timeout):
                async with self._client.post(f"{self.config.base_url}/chat/completions", json=body) as response:
                    status, retry_after = response.status, response.headers.get("Retry-After")
                    text = await response.text(errors="replace")
        except TimeoutError:
            raise RetryableError(f"no answer within {timeout:.1f}s") from None
        except aiohttp.ClientError as e:
            # Refused or dropped connections, bodies cut off mid-transfer.
            raise RetryableError(f"{type(e).__name__}: {e}") from None
        if status in RETRY_STATUS:
            raise RetryableError(f"HTTP {status}: {text[:200]}", retry_after_seconds(retry_after))
        if status in TRANSIENT_STATUS:
            raise TransientError(f"HTTP {status}: {text[:300]}")
        if status >= 400:
            raise FinalError(f"HTTP {status}: {text[:300]}")
        try:
            payload = json.loads(text)
        except ValueError as e:
            raise MalformedError(f"malformed response (not JSON: {e})") from None
        return (*parse_completion(payload), first_token_logprobs(payload))

    def _scrub(self, text: str) -> str:
        """Error texts may quote server answers; a server echoing the key must not leak it."""
        return text.replace(self._key, "***") if self._key else text
