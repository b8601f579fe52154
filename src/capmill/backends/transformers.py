"""Local models through Hugging Face transformers: vision-language models and text chat models.

One backend type, `transformers`, serves both roles; which one a model plays is read from its
config when it loads. A model registered for image-text-to-text (LLaVA, Qwen2-VL/2.5-VL,
Idefics3/SmolVLM, BLIP, …) loads with `AutoModelForImageTextToText` + `AutoProcessor` and answers
`generate` (captions), `chat` (text only), `forced_logits` (a given text's token logits with and
without the image) and `ask` (yes/no questions → P(yes)); any other model loads with
`AutoModelForCausalLM` + `AutoTokenizer` and answers `chat`.

    backend: {type: transformers, model: HuggingFaceTB/SmolVLM-256M-Instruct}
    backend: {type: transformers, model: models/qwen2_lm, params: {max_new_tokens: 200}}

Batching: requests with the same decoding settings go through one `generate` call per chunk of
`batch_size`, left-padded, so outputs match one-by-one decoding. Prompts are rendered with the
model's own chat template after every one of the model's special tokens in the text has been
neutralised. Models without a chat template (BLIP) caption unconditionally, or continue
`caption_prefix` when it is set; their instruction prompts are not used.

Videos: a model whose processor has a video processor and whose chat template places a video
(the Qwen2-VL family) gets the sampled frames as one video, with their rate as its metadata so
the model's temporal positions match the real timing, and the processor told not to sample
again. Other models get the frames as images, in order, with their timestamps stated before the
prompt (`video_as` forces either way).
`params.guidance_scale` turns on classifier-free guidance for captions (a logits processor with
an image-free branch, `capmill.backends.guidance`; approximate for models not trained with image
dropout). Each distinct image of a call is preprocessed once (`capmill.backends.shared_images`).

Audio: an audio-language model (Qwen2-Audio and the others transformers registers for
`AutoModelForMultimodalLM`, see `capmill.backends.hf_audio`) loads with its processor and answers
`generate` for requests carrying audio: the waveform, resampled to its feature extractor's rate,
placed where its chat template puts the audio part. A model that takes no audio refuses an audio
request (and an audio-only model an image one) with a ConfigError naming the model to use.
"""

from __future__ import annotations

import inspect
import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from capmill.backends import hf_audio
from capmill.backends.availability import resolve_model
from capmill.backends.base import ChatRequest, Generation, GenerationParams, VLMRequest
from capmill.backends.common import (
    fit_pixel_budget,
    frames_as_images,
    hf_generate_kwargs,
    import_torch_stack,
    model_special_tokens,
    neutralise_for,
    per_image_once,
    pick_device,
    pick_dtype,
)
from capmill.backends.shared_images import SHARED_IMAGES, OncePerImage, SharedImages, concat_features
from capmill.backends.transformers_scoring import ScoringMixin
from capmill.components import BackendConfig
from capmill.errors import ConfigError, SetupError, is_transient_exception
from capmill.media.image import to_rgb

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


class TransformersConfig(BackendConfig):
    type: Literal["transformers"] = "transformers"
    # Hub id (owner/name) or local folder.
    model: str
    revision: str | None = None
    # "auto" picks CUDA, then MPS, then CPU.
    device: str = "auto"
    # "auto": bfloat16 on GPU, float32 on CPU.
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # Runs Python code shipped with the model; off unless you trust its author.
    trust_remote_code: bool = False
    # Requests per `generate` call; larger is faster until memory runs out.
    batch_size: int = Field(8, ge=1)
    # Decoding defaults for requests that carry no params of their own.
    params: GenerationParams = Field(default_factory=GenerationParams)
    # Largest image (width × height) handed to the processor; bigger ones are scaled down first.
    # Default: derived from the model's image processor.
    max_pixels: int | None = Field(None, ge=1)
    # Text that models without a chat template (BLIP) continue, e.g. "a picture of".
    caption_prefix: str | None = None
    # e.g. "sdpa" or "flash_attention_2"; None lets transformers choose.
    attn_implementation: str | None = None
    # How a video reaches the model: "video" through its video processor, "frames" as images
    # with their timestamps in the text; "auto" uses the video processor where the model has one.
    video_as: Literal["auto", "video", "frames"] = "auto"
    # The unconditional branch of classifier-free guidance (`params.guidance_scale`): "no_image"
    # (the default) renders the prompt without its image, "blank_image" shows a grey image of the
    # same size instead (models without a chat template, BLIP, need it). See
    # capmill.backends.guidance.
    guidance_null: Literal["no_image", "blank_image"] | None = None

    # Unset options added later stay out of the dump: configs without them keep their hash.
    omit_when_none: ClassVar[frozenset[str]] = frozenset({"guidance_null"})

    def build(self) -> TransformersBackend:
        return TransformersBackend(self)

    def model_ids(self) -> list[str]:
        return [self.model]


def is_vision_language(hf_config: Any) -> bool:
    """Whether a model config belongs to an image-text-to-text model."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if hf_config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return True
    auto_map = getattr(hf_config, "auto_map", None) or {}
    return any(k in auto_map for k in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"))


def processor_pixel_budget(image_processor: Any) -> int | None:
    """The largest image worth sending to `image_processor`, in pixels."""
    size = getattr(image_processor, "size", None) or {}
    size = {k: v for k, v in dict(size).items() if isinstance(v, int)}
    explicit = getattr(image_processor, "max_pixels", None) or size.get("max_pixels")
    if isinstance(explicit, int):
        return explicit
    if hasattr(image_processor, "merge_size") and "longest_edge" in size:
        # Qwen2-VL-style processors keep their pixel budget (not a side) in size["longest_edge"].
        return size["longest_edge"]
    sides = [v for k, v in size.items() if k in ("height", "width", "shortest_edge", "longest_edge")]
    sides += [v for v in (getattr(image_processor, "max_image_size", None) or {}).values() if isinstance(v, int)]
    if not sides:
        return None
    # Four times the model's side leaves the processor's own resampling room to work on.
    return (4 * max(sides)) ** 2


def video_kwargs(videos: list[Any]) -> dict[str, Any]:
    """Processor keywords for already sampled videos: the frames, their rate as metadata (so
    models that place frames in time, Qwen2.5-VL and later, see the real timing), and no second
    sampling."""
    from transformers.video_utils import VideoMetadata

    frames = [[to_rgb(f) for f in v.frames] for v in videos]
    metadata = [VideoMetadata(total_num_frames=len(v.frames), fps=v.fps, frames_indices=list(range(len(v.frames))),
                              duration=v.seconds) for v in videos]
    return {"videos": frames, "video_metadata": metadata, "do_sample_frames": False}


class TransformersBackend(ScoringMixin):
    """VisionLanguageModel and LanguageModel through transformers (see the module docstring)."""

    # Runs classifier-free guidance (`params.guidance_scale`; see capmill.backends.common.check_guidance).
    supports_guidance = True

    def __init__(self, config: TransformersConfig):
        self.config = config
        self.model_id = config.model
        self.model: Any = None
        self.processor: Any = None
        self.tokenizer: Any = None
        self.vision = False
        self.takes_audio = False
        self._rendered: dict[tuple[str | None, str, int], str] = {}

    # --- lifecycle ----------------------------------------------------------------------------

    def load(self) -> None:
        if self.model is not None:
            return
        import_torch_stack()
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        cfg = self.config
        path = resolve_model(cfg.model, cfg.revision)
        shared = {"trust_remote_code": cfg.trust_remote_code}
        try:
            hf_config = AutoConfig.from_pretrained(path, **shared)
        except (OSError, ValueError) as e:
            raise SetupError(f"model {cfg.model!r}: no usable config.json in {path} ({e}); point `model` at a "
                             "folder saved with save_pretrained or a hub id") from e
        self.vision = is_vision_language(hf_config)
        audio_only = not self.vision and hf_audio.is_audio_language(hf_config)
        try:
            if audio_only:
                self.processor = AutoProcessor.from_pretrained(path, **shared)
                self.tokenizer = getattr(self.processor, "tokenizer", None)
                if hf_audio.feature_extractor(self.processor) is None or self.tokenizer is None:
                    raise SetupError(
                        f"model {cfg.model!r} is an audio-language model but {path} holds no complete processor "
                        "(preprocessor_config.json with the feature extractor, and tokenizer files); download the "
                        "whole repository, not only the weights")
                model_class = hf_audio.model_class()
            elif self.vision:
                self.processor = AutoProcessor.from_pretrained(path, **shared)
                self.tokenizer = getattr(self.processor, "tokenizer", None)
                if getattr(self.processor, "image_processor", None) is None or self.tokenizer is None:
                    raise SetupError(
                        f"model {cfg.model!r} is a vision-language model but {path} holds no complete processor "
                        "(preprocessor_config.json / processor_config.json and tokenizer files); download the "
                        "whole repository, not only the weights")
                model_class = AutoModelForImageTextToText
            else:
                self.tokenizer = AutoTokenizer.from_pretrained(path, **shared)
                model_class = AutoModelForCausalLM
        except (OSError, ValueError, TypeError) as e:
            raise SetupError(f"model {cfg.model!r}: its processor/tokenizer in {path} could not be loaded "
                             f"({type(e).__name__}: {e}); the folder needs the tokenizer and processor files "
                             "the model was saved with") from e
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        extra = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
        try:
            model = model_class.from_pretrained(path, dtype=self.dtype, **shared, **extra)
        except (OSError, ValueError) as e:
            raise SetupError(f"model {cfg.model!r}: weights in {path} could not be loaded ({e})") from e
        self.model = model.to(self.device).eval()
        # Left padding keeps every prompt's last token at the end of the row, where generation
        # continues; right padding would make batched outputs differ from one-by-one ones.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.special_tokens = model_special_tokens(self.tokenizer)
        self.chat_template = getattr(self.processor, "chat_template", None) or self.tokenizer.chat_template
        if self.chat_template is None and not self.vision:
            raise SetupError(f"model {cfg.model!r} has no chat template; use an instruction-tuned (chat) model")
        self.takes_audio = (audio_only or self.vision) and hf_audio.places_audio(self._apply_template, self.processor)
        if audio_only and not self.takes_audio:
            raise SetupError(f"model {cfg.model!r}: its chat template places no audio part as its processor's audio "
                             "token; the folder needs the chat template the model was trained with")
        self.max_pixels = cfg.max_pixels or (processor_pixel_budget(self.processor.image_processor)
                                             if self.vision else None)
        if self.vision:
            self.processor.image_processor = OncePerImage(self.processor.image_processor)
        self.video_native = self.vision and self._takes_video()
        if cfg.video_as == "video" and not self.video_native:
            raise SetupError(f"model {cfg.model!r} has no video processor (or its chat template places no video); "
                             "set video_as: frames (or auto) to give it videos as frames")
        if cfg.video_as == "frames":
            self.video_native = False

    def _takes_video(self) -> bool:
        """Whether the processor has a video processor and the chat template places a video."""
        token = getattr(self.processor, "video_token", None)
        if getattr(self.processor, "video_processor", None) is None or not token or self.chat_template is None:
            return False
        try:
            probe = self._apply_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "x"}]}])
        except Exception:  # templates raise their own errors (jinja, missing keys) on parts they do not know
            return False
        return token in probe

    def close(self) -> None:
        self.model = self.processor = self.tokenizer = None

    # --- prompts ------------------------------------------------------------------------------

    def neutralise(self, text: str) -> str:
        return neutralise_for(text, self.special_tokens)

    def render(self, request: VLMRequest) -> str:
        """The prompt text of `request` as the model sees it before image tokens are expanded."""
        if self.chat_template is None:
            return self.neutralise(self.config.caption_prefix or "")
        key = (request.system, request.prompt, len(request.images), request.video is not None, request.audio is not None)
        text = self._rendered.get(key)
        if text is None:  # a format's prompt repeats for every sample that has no AltText slot
            if len(self._rendered) >= 4096:
                self._rendered.clear()
            text = self._rendered[key] = self._render(*key)
        return text

    def _render(self, system: str | None, prompt: str, n_images: int, video: bool = False, audio: bool = False) -> str:
        content: list[dict[str, Any]] = ([{"type": "audio"}] if audio else []) + ([{"type": "video"}] if video else [])
        content += [{"type": "image"} for _ in range(n_images)]
        content.append({"type": "text", "text": self.neutralise(prompt)})
        messages = []
        if system:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.neutralise(system)}]})
        messages.append({"role": "user", "content": content})
        return self._apply_template(messages)

    def render_chat(self, request: ChatRequest) -> str:
        messages = [{"role": m["role"], "content": self.neutralise(m["content"])} for m in request.messages]
        return self._apply_template(messages)

    def prompt_tokenizer(self) -> Any:
        """The model's tokenizer over a chat prompt exactly as `chat` renders it (fuse's input budget)."""
        from capmill.text.prompt_budget import HFPromptTokenizer

        self._require_loaded()
        return HFPromptTokenizer(self.tokenizer, lambda messages: self.render_chat(ChatRequest(messages=messages)))

    def _apply_template(self, messages: list[dict[str, Any]]) -> str:
        owner = self.processor if getattr(self.processor, "chat_template", None) else self.tokenizer
        return owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _prepare_image(self, image: Image.Image) -> Image.Image:
        """RGB within the pixel budget."""
        return fit_pixel_budget(to_rgb(image), self.max_pixels)

    # --- generation ---------------------------------------------------------------------------

    def generate(self, requests: list[VLMRequest]) -> list[Generation]:
        self._require_loaded()
        if not self.vision and not self.takes_audio:
            raise ConfigError(f"model {self.model_id!r} is a text-only language model; captioning needs a "
                              "vision-language model (e.g. HuggingFaceTB/SmolVLM-256M-Instruct) or, for audio, an "
                              "audio-language model (e.g. Qwen/Qwen2-Audio-7B-Instruct)")
        self._check_media(requests)
        if not any(r.video is not None or r.audio is not None for r in requests):
            return self._batched(requests, self._vlm_inputs)
        # Videos, audio and images go through the processor in separate calls; frames-as-images
        # requests are ordinary image requests from here on.
        ready = [r if r.video is None or self.video_native else frames_as_images(r) for r in requests]
        videos = [i for i, r in enumerate(ready) if r.video is not None]
        audios = [i for i, r in enumerate(ready) if r.audio is not None and r.video is None]
        others = [i for i, r in enumerate(ready) if r.video is None and r.audio is None]
        results: list[Generation | None] = [None] * len(ready)
        for indices in (others, videos, audios):
            if indices:
                for i, gen in zip(indices, self._batched([ready[i] for i in indices], self._vlm_inputs), strict=True):
                    results[i] = gen
        kept = hf_audio.longest_seconds(self.processor) if audios else None
        for i in audios:  # the feature extractor keeps its first `kept` seconds (Whisper's 30)
            if kept is not None and ready[i].audio.seconds > kept and results[i] is not None:
                results[i].meta["audio_seconds_heard"] = kept
        return results  # type: ignore[return-value]

    def _check_media(self, requests: list[VLMRequest]) -> None:
        """A request carrying what this model cannot take stops the run: every request of the
        stage would fail the same way."""
        if any(r.audio is not None for r in requests) and not self.takes_audio:
            raise ConfigError(f"model {self.model_id!r} takes no audio; caption audio with an audio-language model "
                              "(e.g. Qwen/Qwen2-Audio-7B-Instruct) in a caption stage with `media: audio`")
        if not self.vision and any(r.images or r.video is not None for r in requests):
            raise ConfigError(f"model {self.model_id!r} is an audio-language model and takes no images or videos; "
                              "give this stage `media: audio`, or caption images with a vision-language model")

    def chat(self, requests: list[ChatRequest]) -> list[Generation]:
        self._require_loaded()
        if self.chat_template is None:
            raise ConfigError(f"model {self.model_id!r} has no chat template and cannot chat")
        return self._batched(requests, self._chat_inputs)

    def _require_loaded(self) -> None:
        if self.model is None:
            raise SetupError(f"backend for {self.model_id!r} used before load()")

    def _vlm_inputs(self, requests: list[VLMRequest]) -> Any:
        texts = [self.render(r) for r in requests]
        images = per_image_once(requests, self._prepare_image)
        if self.chat_template is None:  # BLIP-style: one image per request, optional shared prefix
            if any(len(im) != 1 for im in images):
                raise ValueError("this model takes exactly one image per request")
            kwargs = {"text": texts} if self.config.caption_prefix else {}
            kwargs["images"] = [im[0] for im in images]
        else:
            # The template already placed BOS and turn markers; the tokenizer must not add its own.
            kwargs = {"text": texts, "add_special_tokens": False, **({"images": images} if any(images) else {})}
        if any(r.video is not None for r in requests):
            kwargs.update(video_kwargs([r.video for r in requests]))
        if any(r.audio is not None for r in requests):
            kwargs.update(hf_audio.audio_kwargs(self.processor, [r.audio for r in requests]))
        sharing = getattr(self.processor, "image_processor", None)  # OncePerImage, unless a caller swapped it out
        if isinstance(sharing, OncePerImage):
            sharing.shared = None  # a call without images leaves it so
        inputs = self.processor(return_tensors="pt", padding=True, **kwargs)
        if isinstance(sharing, OncePerImage) and sharing.shared is not None:
            inputs[SHARED_IMAGES] = sharing.shared
        return inputs

    def _chat_inputs(self, requests: list[ChatRequest]) -> Any:
        texts = [self.render_chat(r) for r in requests]
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    def _batched(self, requests: list, make_inputs) -> list[Generation]:
        """One generate per chunk of requests sharing decoding settings; a chunk that fails is
        retried request by request so only the culprit gets the error."""
        results: list[Generation | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            params = r.params or self.config.params
            groups[(r.n, params.model_dump_json())].append(i)
        size = self.config.batch_size
        for (n, _), indices in groups.items():
            params = requests[indices[0]].params or self.config.params
            for start in range(0, len(indices), size):
                chunk = indices[start:start + size]
                self._run_chunk([requests[i] for i in chunk], chunk, results, make_inputs, params, n)
        return results  # type: ignore[return-value]

    def _run_chunk(self, reqs, indices, results, make_inputs, params, n) -> None:
        try:
            guidance = self._guidance_inputs(reqs, params, n) if params.guidance_scale is not None else None
            for i, gen in zip(indices, self._generate(make_inputs(reqs), params, n, guidance), strict=True):
                results[i] = gen
        except (ValueError, RuntimeError, TypeError, IndexError) as e:
            # RuntimeError includes out-of-memory; ValueError/TypeError come from processors that
            # refuse an input (wrong image count, unsupported mode).
            if len(reqs) > 1:
                for req, i in zip(reqs, indices, strict=True):
                    self._run_chunk([req], [i], results, make_inputs, params, n)
            else:
                log.warning("%s: request %r failed: %s", self.model_id, reqs[0].tag, e)
                # Out of memory (alone, after the batch did too) or a failed device is no verdict
                # on the request: it is retryable. Processor errors on this input are final.
                results[indices[0]] = Generation(error=f"{type(e).__name__}: {e}", meta={"backend": "transformers"},
                                                 transient=is_transient_exception(e))

    def _guidance_inputs(self, reqs: list, params: GenerationParams, n: int) -> dict[str, Any]:
        """The unconditional prompts of a guided chunk, as model inputs on the device."""
        from capmill.backends.guidance import BLANK_IMAGE, blank_like

        if not all(isinstance(r, VLMRequest) for r in reqs):
            raise ValueError("guidance_scale guides captioning: a chat request has no image to guide by")
        if n > 1 and params.temperature == 0:
            raise ValueError("guidance_scale with n > 1 needs sampling (temperature > 0): greedy n > 1 is beam "
                             "search, which is not guided")
        null = self.config.guidance_null or "no_image"
        if null == BLANK_IMAGE:
            blanks: dict[int, Any] = {}
            uncond = [VLMRequest(prompt=r.prompt, system=r.system, n=r.n, params=r.params, tag=r.tag,
                                 images=[blanks.setdefault(id(im), blank_like(im)) for im in r.images]) for r in reqs]
        elif self.chat_template is None:
            raise ValueError(f"model {self.model_id!r} has no chat template and cannot caption without an image: "
                             "set guidance_null: blank_image on the backend")
        else:
            uncond = [VLMRequest(prompt=r.prompt, system=r.system, n=r.n, params=r.params, tag=r.tag) for r in reqs]
        inputs = dict(self._vlm_inputs(uncond))
        inputs.pop(SHARED_IMAGES, None)
        return self._to_device(inputs)

    def _generate(self, inputs: Any, params: GenerationParams, n: int, guidance: dict | None = None) -> list[Generation]:
        import torch

        shared = inputs.pop(SHARED_IMAGES, None)
        inputs = self._to_device(inputs)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        kwargs = hf_generate_kwargs(params, n)
        if guidance is not None:
            from capmill.backends.guidance import guidance_processor, sampling_processors

            processors = [guidance_processor(self.model, params.guidance_scale, guidance)]
            if kwargs["do_sample"]:
                # Temperature and top-p act on the guided distribution: they run after guidance.
                processors += sampling_processors(params.temperature, params.top_p)
                kwargs.update(temperature=1.0, top_p=1.0)
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList(processors)
        if self.chat_template is not None:  # BLIP's generate sets its own pad id
            kwargs["pad_token_id"] = self.tokenizer.pad_token_id
        with torch.inference_mode():
            model_inputs = inputs
            if shared is not None and n == 1 and params.num_beams == 1:
                model_inputs = self._encode_shared_images(inputs, shared) or inputs
            out = self.model.generate(**model_inputs, **kwargs)
        prompt_len = inputs["input_ids"].shape[1] if "input_ids" in inputs else 0
        # Decoder-only models return prompt + answer; BLIP's decoder returns [BOS] + prefix + answer.
        new = out if self.chat_template is None else out[:, prompt_len:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        if self.chat_template is None and self.config.caption_prefix:
            prefix = self.config.caption_prefix.strip().lower()
            texts = [t.strip()[len(prefix):] if t.strip().lower().startswith(prefix) else t for t in texts]
        pad = self.tokenizer.pad_token_id
        lengths = (new != pad).sum(dim=1).tolist() if pad is not None else [new.shape[1]] * len(texts)
        prompt_tokens = (inputs["attention_mask"].sum(dim=1).tolist() if "attention_mask" in inputs
                         else [prompt_len] * (len(texts) // n))
        gens = []
        for j in range(len(texts) // n):
            gens.append(Generation(texts=[t.strip() for t in texts[j * n:(j + 1) * n]], meta={
                "backend": "transformers",
                "prompt_tokens": int(prompt_tokens[j]),
                "completion_tokens": [int(x) for x in lengths[j * n:(j + 1) * n]],
                "truncated": [int(x) >= params.max_new_tokens for x in lengths[j * n:(j + 1) * n]],
            }))
        return gens

    def _encode_shared_images(self, inputs: dict[str, Any], shared: SharedImages) -> dict[str, Any] | None:
        """`inputs` with the vision tower already run once per distinct image, or None where the
        model cannot take that.

        transformers' `generate` encodes the images of a batch before prefill with the base
        model's `get_image_features` and passes the result as `mm_encoder_outputs`; this does the
        same on the distinct images alone and hands each request its image's features, so the
        formats of one image share one encoding. Models whose `forward` takes no
        `mm_encoder_outputs`, whose encoder reads inputs that are not per image, or whose
        features do not come back one entry per image, are left to `generate` as they are.
        """
        model = self.model
        encoder = getattr(model.base_model, "get_image_features", None)
        supports = getattr(model, "_supports_mm_encoder_outputs", None)
        if encoder is None or supports is None or not supports() or "image" not in getattr(model, "input_modalities", ()):
            return None
        keys = [k for k in inspect.signature(encoder).parameters if k != "kwargs" and k in inputs]
        if "pixel_values" not in keys or any(k not in shared.parts[0] for k in keys):
            return None
        unique = self._to_device(concat_features(shared.parts, pad=True))
        encoded = encoder(**{k: unique[k] for k in keys}, return_dict=True)
        features = encoded.pooler_output
        if not isinstance(features, (list, tuple)) or len(features) != len(shared.parts):
            return None
        encoded.pooler_output = type(features)(features[i] for i in shared.index)
        rest = {k: v for k, v in inputs.items() if k not in keys}
        rest["mm_encoder_outputs"] = {"image": encoded}
        return rest

    def _to_device(self, inputs: Any) -> Any:
        import torch

        moved = {}
        for key, value in inputs.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device, dtype=self.dtype) if value.is_floating_point() else value.to(self.device)
            moved[key] = value
        return moved
