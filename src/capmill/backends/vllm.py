"""vLLM in-process backend (`type: vllm`, `pip install 'capmill[vllm]'`).

One `vllm.LLM` per stage worker; a batch of requests is one `LLM.chat` call (vLLM schedules them
together with continuous batching), with the model's own chat template and images handed over
as PIL images. Requests asking for beams go through `LLM.beam_search` instead, which takes
rendered prompts. Images are fitted to `max_pixels` before they reach the processor, and the
budget is also passed to processors that take one (Qwen2-VL's `max_pixels`); vLLM drops
processor keywords a model does not accept.

Videos (models vLLM runs with video input, the Qwen2-VL family) go through `LLM.generate`: the
prompt rendered with the model's chat template placing one video, the sampled frames as one
array in `multi_modal_data`, with their rate and indices as the video's metadata so the model
does not sample again. `max_videos_per_prompt` must be 1 or more for them (vLLM reserves memory
per video); a video request to an engine started without it fails with that advice.

vllm is imported in `load()`, never at module import, so configs using this backend validate
and travel to Ray workers on machines without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from capmill.backends.base import Answer, AskRequest, ChatRequest, Generation, GenerationParams, VLMRequest
from capmill.backends.common import fit_pixel_budget, model_special_tokens, neutralise_for, per_image_once, yes_probability
from capmill.components import BackendConfig
from capmill.errors import SetupError, is_transient_exception

if TYPE_CHECKING:
    from PIL import Image

INSTALL_HINT = "the vllm backend needs vLLM: install it with `pip install 'capmill[vllm]'` (Linux with a CUDA GPU)"


class VLLMBackendConfig(BackendConfig):
    type: Literal["vllm"] = "vllm"
    # A hub id or a local folder.
    model: str
    # GPUs one engine shards the model over.
    tensor_parallel_size: int = Field(1, ge=1)
    # Share of GPU memory vLLM takes (weights + KV cache); lower it when another stage's model
    # shares the GPU.
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    # Context length; None takes the model's, which may reserve a lot of KV cache for nothing:
    # captions need a few thousand tokens at most.
    max_model_len: int | None = Field(None, ge=1)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # Pixel budget per image: larger images are downscaled here, and the budget is passed to the
    # processor (`mm_processor_kwargs.max_pixels`) for models whose processor takes it.
    max_pixels: int | None = Field(1_003_520, ge=1)
    # Images one prompt may carry (vLLM reserves memory for this many).
    max_images_per_prompt: int = Field(1, ge=0)
    # Videos one prompt may carry: 1 to caption videos, 0 (no memory reserved) otherwise.
    max_videos_per_prompt: int = Field(0, ge=0)
    trust_remote_code: bool = False
    # Skip CUDA graph capture: faster start, slower decoding. Handy for tests and small runs.
    enforce_eager: bool = False
    seed: int = 0
    # Default decoding settings; a request's own params replace them.
    params: GenerationParams = Field(default_factory=GenerationParams)
    # Overrides of the processor call (e.g. {min_pixels: 3136} for Qwen2-VL).
    mm_processor_kwargs: dict[str, Any] = Field(default_factory=dict)
    # A chat template replacing the model's own (a path or the template text).
    chat_template: str | None = None
    # Any other vllm.LLM / EngineArgs keyword (e.g. {quantization: awq, max_num_seqs: 64}).
    engine_args: dict[str, Any] = Field(default_factory=dict)

    def build(self) -> VLLMBackend:
        return VLLMBackend(self)

    def model_ids(self) -> list[str]:
        return [self.model]

    def llm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `vllm.LLM` for this config."""
        mm_kwargs = dict(self.mm_processor_kwargs)
        if self.max_pixels is not None:
            mm_kwargs.setdefault("max_pixels", self.max_pixels)
        kwargs: dict[str, Any] = {
            "model": self.model,
            "tensor_parallel_size": self.tensor_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "dtype": self.dtype,
            "trust_remote_code": self.trust_remote_code,
            "enforce_eager": self.enforce_eager,
            "seed": self.seed,
            "limit_mm_per_prompt": {"image": self.max_images_per_prompt,
                                    **({"video": self.max_videos_per_prompt} if self.max_videos_per_prompt else {})},
        }
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if mm_kwargs:
            kwargs["mm_processor_kwargs"] = mm_kwargs
        # engine_args last: the user's explicit choice wins over the typed fields.
        return {**kwargs, **self.engine_args}


def sampling_kwargs(params: GenerationParams, n: int) -> dict[str, Any]:
    """GenerationParams and a candidate count → `vllm.SamplingParams` keywords.

    vLLM needs no special case for greedy n > 1: with temperature 0 it returns n copies, which is
    what was asked. `seed` makes sampled candidates reproducible per request.
    """
    kwargs: dict[str, Any] = {"n": n, "temperature": params.temperature, "top_p": params.top_p,
                              "max_tokens": params.max_new_tokens}
    if params.seed is not None:
        kwargs["seed"] = params.seed
    if params.repetition_penalty is not None:
        kwargs["repetition_penalty"] = params.repetition_penalty
    return kwargs


def beam_kwargs(params: GenerationParams, n: int) -> dict[str, Any]:
    """→ `vllm.sampling_params.BeamSearchParams` keywords; at least n beams so n come back."""
    return {"beam_width": max(params.num_beams, n), "max_tokens": params.max_new_tokens,
            "temperature": params.temperature}


def vlm_messages(prompt: str, images: list[Image.Image], system: str | None) -> list[dict[str, Any]]:
    """One user turn with the images first, as `LLM.chat` takes them (OpenAI-style parts; PIL
    images as `image_pil`)."""
    content: list[dict[str, Any]] = [{"type": "image_pil", "image_pil": img} for img in images]
    content.append({"type": "text", "text": prompt})
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": content})
    return messages


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same conversation for a HF chat template: images become `{"type": "image"}`
    placeholders, their pixels travel separately as multi_modal_data."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = [{"type": "image"} if part["type"] == "image_pil" else part for part in content]
        out.append({"role": m["role"], "content": content})
    return out


def video_prompt(tokenizer: Any, request: VLMRequest, neutralise, chat_template: str | None = None) -> dict[str, Any]:
    """A video request as `LLM.generate` takes it: the chat template's text with one video
    placeholder, and the frames as a (frames, height, width, 3) array with their metadata."""
    import numpy as np

    video = request.video
    content = [{"type": "video"}, {"type": "text", "text": neutralise(request.prompt)}]
    messages: list[dict[str, Any]] = [{"role": "system", "content": neutralise(request.system)}] if request.system else []
    messages.append({"role": "user", "content": content})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         **({"chat_template": chat_template} if chat_template else {}))
    size = video.frames[0].size
    frames = np.stack([np.asarray(f.convert("RGB").resize(size)) for f in video.frames])
    metadata = {"fps": video.fps, "duration": video.seconds, "total_num_frames": len(video.frames),
                "frames_indices": list(range(len(video.frames))), "do_sample_frames": False}
    return {"prompt": text, "multi_modal_data": {"video": [(frames, metadata)]}}


def engine_failures() -> tuple[type[BaseException], ...]:
    """vLLM's exceptions for an engine that failed or died (not the request's fault), where this
    vLLM has them; with `is_transient_exception` (GPU out of memory) they fail a batch
    transiently instead of costing each sample its row for good."""
    try:
        from vllm.v1.engine import exceptions
    except ImportError:
        return ()
    return tuple(t for t in (getattr(exceptions, "EngineDeadError", None), getattr(exceptions, "EngineGenerateError", None)) if t)


def beam_text(tokenizer: Any, sequence: Any) -> str:
    """The continuation of a beam: vLLM's beam tokens (and its `text`) start with the prompt's
    tokens, image placeholders expanded, so those are cut before decoding."""
    prompt = sequence.orig_prompt if isinstance(sequence.orig_prompt, dict) else {}
    start = len(prompt.get("prompt_token_ids") or [])
    return tokenizer.decode(sequence.tokens[start:], skip_special_tokens=True)


class VLLMBackend:
    """Implements VisionLanguageModel and LanguageModel with an in-process vllm.LLM."""

    def __init__(self, config: VLLMBackendConfig):
        self.config = config
        self.model_id = config.model
        self.llm: Any = None
        self.special_tokens: list[str] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.config.model!r})"

    def load(self) -> None:
        if self.llm is not None:
            return
        try:
            import vllm
        except ImportError:
            raise SetupError(INSTALL_HINT) from None
        from capmill.backends.availability import MISSING, locate, missing_folder

        if locate(self.config.model).source == MISSING:
            raise SetupError(missing_folder(self.config.model))
        try:
            self.llm = vllm.LLM(**self.config.llm_kwargs())
        except (OSError, ValueError) as e:
            # vLLM raises these for a model id the hub does not know, a folder without a
            # config, or a model it has no implementation for.
            raise SetupError(f"vLLM could not load {self.config.model!r}: {e}. Give a local folder or a hub id "
                             f"that is available offline (see `capmill models`).") from e
        self.special_tokens = model_special_tokens(self.llm.get_tokenizer())

    def close(self) -> None:
        if self.llm is None:
            return
        self.llm = None
        # Free the GPU for the next stage's model in this worker.
        import gc

        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def neutralise(self, text: str) -> str:
        return neutralise_for(text, self.special_tokens)

    def prompt_tokenizer(self) -> Any:
        """The engine's tokenizer over a chat prompt as `chat` renders it (fuse's input budget)."""
        from capmill.text.prompt_budget import HFPromptTokenizer

        if self.llm is None:
            raise SetupError("the vllm backend is not loaded: call load() first")
        tokenizer = self.llm.get_tokenizer()
        extra = {"chat_template": self.config.chat_template} if self.config.chat_template else {}

        def render(messages: list[dict[str, str]]) -> str:
            neutral = [{"role": m["role"], "content": self.neutralise(m["content"])} for m in messages]
            return tokenizer.apply_chat_template(neutral, tokenize=False, add_generation_prompt=True, **extra)

        return HFPromptTokenizer(tokenizer, render)

    # ---- protocol methods ------------------------------------------------------------------

    def generate(self, requests: list[VLMRequest]) -> list[Generation]:
        if any(r.audio is not None for r in requests):
            from capmill.errors import ConfigError

            # An audio request read as text alone would be captioned from the prompt: refuse.
            raise ConfigError("the vllm backend takes no audio; serve the audio-language model with `vllm serve` "
                              "and caption through `type: openai` (it sends the audio as input_audio)")
        if any(r.video is not None for r in requests):
            return self._with_videos(requests)
        return self._run(self.vlm_conversations(requests), [(r.n, r.params or self.config.params) for r in requests])

    def _with_videos(self, requests: list[VLMRequest]) -> list[Generation]:
        """Image requests as usual; video requests in one `LLM.generate` call."""
        out: list[Generation | None] = [None] * len(requests)
        images = [i for i, r in enumerate(requests) if r.video is None]
        videos = [i for i, r in enumerate(requests) if r.video is not None]
        if images:
            for i, gen in zip(images, self.generate([requests[i] for i in images]), strict=True):
                out[i] = gen
        if self.config.max_videos_per_prompt < 1:
            for i in videos:
                out[i] = Generation(error="this vLLM engine takes no video: set max_videos_per_prompt: 1 on the "
                                          "backend (vLLM reserves memory per video)", meta={"backend": "vllm"})
            return out  # type: ignore[return-value]
        if self.llm is None:
            raise SetupError("the vllm backend is not loaded: call load() first")
        from vllm import SamplingParams

        tokenizer = self.llm.get_tokenizer()
        prompts = [video_prompt(tokenizer, requests[i], self.neutralise, self.config.chat_template) for i in videos]
        params = [SamplingParams(**sampling_kwargs(requests[i].params or self.config.params, requests[i].n)) for i in videos]
        results = self.llm.generate(prompts, params, use_tqdm=False)
        for i, r in zip(videos, results, strict=True):
            out[i] = self._generation([c.text for c in r.outputs], [c.finish_reason for c in r.outputs],
                                      len(r.prompt_token_ids or []), sum(len(c.token_ids) for c in r.outputs))
        return out  # type: ignore[return-value]

    def chat(self, requests: list[ChatRequest]) -> list[Generation]:
        return self._run(self.chat_conversations(requests), [(r.n, r.params or self.config.params) for r in requests])

    def vlm_conversations(self, requests: list[VLMRequest]) -> list[list[dict[str, Any]]]:
        """What `LLM.chat` receives for caption requests: texts neutralised, images fitted."""
        budget = self.config.max_pixels
        images = per_image_once(requests, lambda img: fit_pixel_budget(img, budget))
        return [vlm_messages(self.neutralise(r.prompt), fitted, self.neutralise(r.system) if r.system else None)
                for r, fitted in zip(requests, images, strict=True)]

    def chat_conversations(self, requests: list[ChatRequest]) -> list[list[dict[str, Any]]]:
        return [[{"role": m["role"], "content": self.neutralise(m["content"])} for m in r.messages] for r in requests]

    def ask(self, requests: list[AskRequest]) -> list[Answer]:
        """P("yes") for each yes/no question: one `LLM.chat` call for the batch, one greedy token
        per question with the top 20 log-probabilities, read as `yes_probability` does."""
        if self.llm is None:
            raise SetupError("the vllm backend is not loaded: call load() first")
        if not requests:
            return []
        from vllm import SamplingParams

        conversations = self.vlm_conversations([VLMRequest(prompt=r.question, images=[r.image], tag=r.tag)
                                                for r in requests])
        kwargs: dict[str, Any] = {"use_tqdm": False}
        if self.config.chat_template:
            kwargs["chat_template"] = self.config.chat_template
        results = self.llm.chat(conversations, SamplingParams(max_tokens=1, temperature=0.0, logprobs=20), **kwargs)
        return [answer_from_logprobs(r.outputs[0].logprobs) for r in results]

    def _run(self, conversations: list[list[dict[str, Any]]], settings: list[tuple[int, GenerationParams]]) -> list[Generation]:
        if self.llm is None:
            raise SetupError("the vllm backend is not loaded: call load() first")
        out: list[Generation | None] = [None] * len(conversations)
        sampled = [i for i, (_, p) in enumerate(settings) if p.num_beams == 1]
        beamed = [i for i, (_, p) in enumerate(settings) if p.num_beams > 1]
        try:
            if sampled:
                for i, gen in zip(sampled, self._chat([conversations[i] for i in sampled], [settings[i] for i in sampled]), strict=True):
                    out[i] = gen
            for i, gen in zip(beamed, self._beams([conversations[i] for i in beamed], [settings[i] for i in beamed]), strict=True):
                out[i] = gen
        except Exception as e:
            if not (is_transient_exception(e) or isinstance(e, engine_failures())):
                raise  # the stage retries sample by sample to find the request at fault
            error = f"vLLM engine failed: {type(e).__name__}: {e}"
            return [Generation(error=error, meta={"backend": "vllm"}, transient=True) for _ in conversations]
        return out  # type: ignore[return-value]

    def _chat(self, conversations, settings) -> list[Generation]:
        from vllm import SamplingParams

        params = [SamplingParams(**sampling_kwargs(p, n)) for n, p in settings]
        kwargs: dict[str, Any] = {"use_tqdm": False}
        if self.config.chat_template:
            kwargs["chat_template"] = self.config.chat_template
        # One call for the whole batch: vLLM schedules all of it together.
        results = self.llm.chat(conversations, params, **kwargs)
        return [self._generation([c.text for c in r.outputs], [c.finish_reason for c in r.outputs],
                                 len(r.prompt_token_ids or []), sum(len(c.token_ids) for c in r.outputs))
                for r in results]

    def _beams(self, conversations, settings) -> list[Generation]:
        """Beam search takes rendered prompts: the model's chat template is applied here, one
        `beam_search` call per distinct beam setting in the batch."""
        if not conversations:
            return []
        from vllm.sampling_params import BeamSearchParams

        tokenizer = self.llm.get_tokenizer()
        prompts = []
        for conversation in conversations:
            images = [part["image_pil"] for m in conversation if isinstance(m["content"], list)
                      for part in m["content"] if part["type"] == "image_pil"]
            text = tokenizer.apply_chat_template(template_messages(conversation), tokenize=False,
                                                 add_generation_prompt=True,
                                                 **({"chat_template": self.config.chat_template} if self.config.chat_template else {}))
            prompts.append({"prompt": text, **({"multi_modal_data": {"image": images}} if images else {})})
        out: list[Generation | None] = [None] * len(conversations)
        groups: dict[tuple, list[int]] = {}
        for i, (n, p) in enumerate(settings):
            groups.setdefault(tuple(sorted(beam_kwargs(p, n).items())), []).append(i)
        for key, members in groups.items():
            results = self.llm.beam_search([prompts[i] for i in members], BeamSearchParams(**dict(key)))
            for i, result in zip(members, results, strict=True):
                n = settings[i][0]
                best = result.sequences[:n]
                out[i] = self._generation([beam_text(tokenizer, s) for s in best], ["beam"] * len(best), None, None)
                out[i].meta["num_beams"] = dict(key)["beam_width"]
        return out  # type: ignore[return-value]

    def _generation(self, texts: list[str], reasons: list[str | None], prompt_tokens: int | None,
                    completion_tokens: int | None) -> Generation:
        meta: dict[str, Any] = {"backend": "vllm", "finish_reasons": reasons}
        if prompt_tokens is not None:
            meta["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        if not any(t.strip() for t in texts):
            return Generation(texts=texts, error="empty output", meta=meta)
        return Generation(texts=texts, meta=meta)


def answer_from_logprobs(logprobs: Any) -> Answer:
    """An `Answer` from vLLM's per-position log-probabilities (a list whose first entry maps token
    ids to objects with `logprob` and `decoded_token`)."""
    if not logprobs or not logprobs[0]:
        return Answer(p_yes=None, error="vLLM returned no log-probabilities")
    top = {}
    for entry in logprobs[0].values():
        token = getattr(entry, "decoded_token", None)
        if isinstance(token, str):
            top.setdefault(token, float(entry.logprob))
    p = yes_probability(top)
    if p is None:
        return Answer(p_yes=None, error="neither yes nor no among the answer's 20 most likely first tokens")
    return Answer(p_yes=p, source="logprobs", meta={"backend": "vllm"})
