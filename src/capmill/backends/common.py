"""Helpers every model backend shares: prompt hygiene against a model's own special tokens,
images fitted to a pixel budget, decoding settings, device and dtype choice.

Nothing here imports torch at module level; functions that need it import it when called.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from capmill.prompts.safety import delimiters, neutralise_model_tokens

if TYPE_CHECKING:
    from PIL import Image

    from capmill.backends.base import GenerationParams, VLMRequest

T = TypeVar("T")

# Visible look-alikes for the brackets that special tokens are made of: a reader still sees what
# the text said, the tokenizer no longer matches the token.
_LOOKALIKE = str.maketrans({"<": "‹", ">": "›", "[": "⟦", "]": "⟧", "|": "¦"})
_WORDLIKE = re.compile(r"^[\w\s]*$")


def model_special_tokens(tokenizer: Any) -> list[str]:
    """Every string `tokenizer` reads as one special or added token (chat markers, image
    placeholders, grid tags), longest first; plain-word and whitespace added tokens are left out
    because they tokenize the same as ordinary text would."""
    found = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        found.add(str(getattr(added, "content", added)))
    return sorted((t for t in found if t and len(t) > 1 and not _WORDLIKE.match(t)), key=len, reverse=True)


# capmill's delimiters around untrusted text, as one splitting pattern (the capture group keeps
# them in the split's output).
_DELIMITERS = re.compile("(" + "|".join(re.escape(d) for d in delimiters()) + ")")


def neutralise_for(text: str, special_tokens: Iterable[str]) -> str:
    """`text` with every known special-token shape and every one of `special_tokens` broken, so
    that none of it reaches a tokenizer as a special token.

    capmill's delimiters (`<alt_text>` … `</alt_text>` and the other kinds) are left exactly as
    they are: untrusted text was neutralised before it was wrapped, so every delimiter in a
    prompt is a real one, and rewriting them here would make the real closing marker identical to
    a neutralised forgery inside the data. Only the text between them is touched."""
    parts = _DELIMITERS.split(text)
    return "".join(part if i % 2 else _neutralise_part(part, special_tokens) for i, part in enumerate(parts))


def _neutralise_part(text: str, special_tokens: Iterable[str]) -> str:
    text = neutralise_model_tokens(text)
    for token in special_tokens:
        if token in text:
            broken = token.translate(_LOOKALIKE)
            if broken == token:  # no bracket to swap: split it with a visible space instead
                broken = token[0] + " " + token[1:]
            text = text.replace(token, broken)
    return text


def fit_pixel_budget(image: Image.Image, max_pixels: int | None) -> Image.Image:
    """`image` scaled down (aspect kept) so that width × height ≤ `max_pixels`; never scaled up.
    Sending a huge image whole makes the processor spend seconds and gigabytes on pixels the model
    throws away."""
    if max_pixels is None or image.width * image.height <= max_pixels:
        return image
    from PIL import Image as PILImage

    scale = math.sqrt(max_pixels / (image.width * image.height))
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    # Bicubic after a box reduction by whole factors (reducing_gap): what PIL's thumbnail does,
    # several times faster than Lanczos on the full image, and the processor resizes again anyway.
    return image.resize(size, PILImage.Resampling.BICUBIC, reducing_gap=2.0)


def per_image_once(requests: Sequence[VLMRequest], prepare: Callable[[Image.Image], T]) -> list[list[T]]:
    """`prepare` applied to each request's images, once per distinct image object. The formats of
    a sample share one image object, so it is resized or encoded once per batch instead of once per
    format (the requests keep the originals alive meanwhile, so their ids are not reused)."""
    done: dict[int, T] = {}
    rows = []
    for request in requests:
        for image in request.images:
            if id(image) not in done:
                done[id(image)] = prepare(image)
        rows.append([done[id(image)] for image in request.images])
    return rows


def frames_as_images(request: VLMRequest) -> VLMRequest:
    """A video request as an image request: the frames in order, their timestamps stated before
    the prompt. For models and servers that take images but no video."""
    from capmill.backends.base import VLMRequest

    video = request.video
    times = ", ".join(f"{t:.1f} s" for t in video.times)
    intro = (f"The {len(video.frames)} images are frames of one {video.seconds:.0f}-second video, in order, "
             f"taken at {times}.\n")
    return VLMRequest(prompt=intro + request.prompt, images=[*request.images, *video.frames], n=request.n,
                      system=request.system, params=request.params, tag=request.tag)


def greedy(params: GenerationParams) -> bool:
    return params.temperature == 0


def hf_generate_kwargs(params: GenerationParams, n: int) -> dict[str, Any]:
    """`GenerationParams` and a candidate count as keyword arguments of transformers' `generate`.

    Greedy decoding cannot give n different candidates, so n > 1 without sampling becomes beam
    search with max(n, num_beams) beams returning the n best (the usual way to get ranked
    alternatives from a deterministic decoder).
    """
    kwargs: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "num_return_sequences": n}
    if params.repetition_penalty is not None:
        kwargs["repetition_penalty"] = params.repetition_penalty
    if greedy(params):
        beams = max(params.num_beams, n if n > 1 else 1)
        kwargs.update(do_sample=False, num_beams=beams)
        # Unset sampling knobs that a model's generation_config may carry, so transformers does not
        # warn that they are ignored.
        kwargs.update(temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p,
                      num_beams=params.num_beams, top_k=None)
    return kwargs


def pick_device(requested: str = "auto") -> str:
    """CUDA, then Apple MPS, then CPU, unless the config names one."""
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(requested: str, device: str) -> Any:
    """bfloat16 on a GPU that supports it (half the memory, same range as float32), float16 on
    MPS, float32 on CPU where half precision is slow; or the dtype the config names."""
    import torch

    if requested != "auto":
        return getattr(torch, requested)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.startswith("mps"):
        return torch.float16
    return torch.float32


def import_torch_stack(extra: str = "transformers") -> None:
    """Fail at setup with the install line when the model stack is missing."""
    from capmill.errors import SetupError

    try:
        import torch  # noqa: F401
        import transformers
    except ImportError as e:
        raise SetupError(f"this backend needs {e.name}: install it with `pip install 'capmill[{extra}]'`") from e
    # transformers draws a progress bar for every checkpoint it loads; capmill reports its own
    # progress, and a log of a long run is no place for a bar per model load.
    transformers.utils.logging.disable_progress_bar()


def check_guidance(backend: Any, params: GenerationParams | None, role: str) -> None:
    """Refuse classifier-free guidance at setup where the backend cannot run its image-free
    branch (only backends with `supports_guidance` can): ignoring it would change the captions'
    meaning without a word."""
    from capmill.errors import ConfigError

    for p in (params, getattr(getattr(backend, "config", None), "params", None)):
        if p is not None and p.guidance_scale is not None and not getattr(backend, "supports_guidance", False):
            raise ConfigError(f"{role}: params.guidance_scale needs a backend that runs classifier-free guidance "
                              f"(type: transformers); {type(backend).__name__} cannot, so remove guidance_scale or "
                              f"switch the backend")


def yes_probability(top: dict[str, float]) -> float | None:
    """P("yes") from the top log-probabilities of the first answer token (token text → log-prob),
    as servers return them: the probability mass of the tokens that read "yes" (any case, any
    surrounding space or punctuation) against that of those that read "no", renormalised over the two. None
    when neither is among them."""
    def word(token: str) -> str:
        return token.strip().strip(".,!?:;*\"'").lower()

    yes = sum(math.exp(lp) for token, lp in top.items() if word(token) == "yes")
    no = sum(math.exp(lp) for token, lp in top.items() if word(token) == "no")
    if yes + no == 0:
        return None
    return yes / (yes + no)
