"""CapsFusion's input budget: the whole prompt the fusing LLM reads, counted with its own tokenizer.

CapsFusion (BAAI, CVPR 2024; reference baaivision/CapsFusion `capsfusion_inference.py` and
`config.yaml`, `text_input_max_length: 256`) wraps the AltText and the synthetic caption in its
instruction, counts the whole wrapped prompt with the LLM's tokenizer, and when it is too long cuts
as many tokens as it is over from the end of the AltText (then truncates the tokenized prompt to
256). `fit_prompt` does the same with capmill's prompt as the backend renders it (chat template,
system turn, delimiters and all): the AltText loses its last tokens first, recounted until the
prompt fits (re-tokenising a cut text can shift the count by a token); only when the AltText is
gone is the caption cut, and the instructions never are. Two deliberate differences: a prompt of
exactly the budget is left whole (the reference's `>= 256` test empties the AltText then, a
slice of `[:-0]`), and the end of the prompt is never truncated away (the reference's final
truncation would cut its "New Sentence:" cue when the caption alone overflows).

`fit_inputs` is capmill's earlier rule, kept as the named option `budget_scope: inputs`: AltText +
caption alone within the budget, the AltText cut first, at word boundaries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from capmill.errors import ConfigError, SetupError

Messages = list[dict[str, str]]


@runtime_checkable
class PromptTokenizer(Protocol):
    """The tokenizer an LLM reads its prompt with, as far as a token budget needs it."""

    def prompt_length(self, messages: Messages) -> int:
        """Tokens of the whole prompt of `messages`, as the model receives it."""
        ...

    def encode(self, text: str) -> Sequence[Any]: ...

    def decode(self, tokens: Sequence[Any]) -> str: ...


class HFPromptTokenizer:
    """A transformers tokenizer. `render` turns messages into the exact prompt text a backend sends
    (its chat template and hygiene); without it the tokenizer's chat template renders them, and a
    tokenizer without one reads the turns joined by blank lines, with its special tokens."""

    def __init__(self, tokenizer: Any, render: Callable[[Messages], str] | None = None):
        self.tokenizer = tokenizer
        self.render = render

    def prompt_length(self, messages: Messages) -> int:
        if self.render is not None:
            return len(self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"])
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return len(self.tokenizer("\n\n".join(m["content"] for m in messages))["input_ids"])

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, tokens: Sequence[Any]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)


def load_prompt_tokenizer(name: str, backend: Any) -> PromptTokenizer:
    """`model`: the backend's own (`backend.prompt_tokenizer()`); otherwise a transformers tokenizer
    by name or folder. A setup step: it may load files and raise SetupError."""
    if name == "model":
        own = getattr(backend, "prompt_tokenizer", None)
        tokenizer = own() if callable(own) else None
        if tokenizer is None:
            raise SetupError(
                f"fuse: budget_tokenizer: model needs the fusing LLM's tokenizer, which the "
                f"{type(backend).__name__} backend cannot give (a server keeps it); name it instead, "
                f"e.g. budget_tokenizer: {getattr(backend, 'model_id', 'OWNER/NAME')} (a hub id or a local folder)"
            )
        return tokenizer
    if name == "clip":
        raise ConfigError("fuse: budget_tokenizer: clip counts CLIP's BPE, which no LLM reads its prompt with; "
                          "use it only with budget_scope: inputs, or name the LLM's tokenizer (or `model`)")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise SetupError(f"tokenizer {name!r} needs transformers: pip install 'capmill[transformers]'") from None
    try:
        return HFPromptTokenizer(AutoTokenizer.from_pretrained(name))
    except (OSError, ValueError) as e:
        raise SetupError(f"could not load tokenizer {name!r} for the fuse input budget ({e}); use a local "
                         f"tokenizer folder or download it first (hf download {name})") from None


def fit_prompt(alt: str, caption: str, budget: int, tokenizer: PromptTokenizer,
               render: Callable[[str, str], Messages]) -> tuple[str, str, int]:
    """(AltText, caption, prompt tokens) with the whole prompt `render(alt, caption)` within
    `budget` tokens: the AltText's last tokens go first, then the caption's."""
    total = tokenizer.prompt_length(render(alt, caption))
    if total <= budget:
        return alt, caption, total
    alt, total = _cut(alt, lambda a: tokenizer.prompt_length(render(a, caption)), total, budget, tokenizer)
    if total > budget:
        caption, total = _cut(caption, lambda c: tokenizer.prompt_length(render(alt, c)), total, budget, tokenizer)
    return alt, caption, total


def _cut(text: str, length_with: Callable[[str], int], total: int, budget: int,
         tokenizer: PromptTokenizer) -> tuple[str, int]:
    tokens = tokenizer.encode(text)
    keep = len(tokens)
    while total > budget and keep > 0:
        keep = max(0, keep - (total - budget))
        text = tokenizer.decode(tokens[:keep]).strip()
        total = length_with(text)
    return text, total


def fit_inputs(alt: str, caption: str, budget: int, count: Callable[[str], int]) -> tuple[str, str]:
    """capmill's earlier rule: AltText + caption (alone) within `budget` tokens of `count`, the
    AltText cut first at a word boundary, then the caption."""
    from capmill.text.length import truncate_to

    alt_cut = truncate_to(alt, max(budget - count(caption), 0), count)
    if not alt_cut:
        caption = truncate_to(caption, budget, count)
    return alt_cut, caption
