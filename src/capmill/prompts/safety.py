"""Making untrusted web text safe to place inside a prompt.

AltText is written by whoever made the web page. Before it reaches a prompt it is cleaned
(control characters removed, whitespace collapsed, length capped), every string that a
tokenizer would read as a special token (image placeholders, chat-turn markers, our own
delimiters) is neutralised, and the result is wrapped in delimiters that the template tells the
model to treat as quoted data.
"""

from __future__ import annotations

import re
import unicodedata

OPEN, CLOSE = "<alt_text>", "</alt_text>"

# Special-token shapes of the model families capmill drives (LLaVA, Qwen2-VL/2.5-VL, Idefics3/
# SmolVLM, BLIP, Llama, Mistral, Gemma, Phi) plus our own delimiters. A match gets a zero-width-free
# visible break ("<|im_start|>" → "‹|im_start|›"), so no tokenizer sees the special token while a
# reader still sees what the web page said.
_SPECIAL = re.compile(
    r"<\|[^|<>\n]{1,40}\|>"  # <|im_start|>, <|image_pad|>, <|vision_start|>, <|eot_id|>, <|endoftext|>
    r"|<｜[^｜<>\n]{1,40}｜>"  # DeepSeek's full-width bars: <｜begin▁of▁sentence｜>
    # Spaces inside the brackets are tolerated so "< /alt_text >" cannot pass for our delimiter.
    r"|<\s*/?\s*(?:image|video|audio|fake_token_around_image|global-img|row_\d+_col_\d+|end_of_utterance|s|unk|pad|bos|eos|start_of_turn|end_of_turn|start_of_image|end_of_image|alt_text|caption)\s*>"
    r"|\[/?(?:INST|SYS|IMG|IMG_BREAK|IMG_END)\]"
    r"|<<\s*/?SYS\s*>>",
    re.IGNORECASE,
)


def neutralise_special_tokens(text: str) -> str:
    return _SPECIAL.sub(lambda m: m.group(0).replace("<", "‹").replace(">", "›").replace("[", "⟦").replace("]", "⟧"), text)


def clean_text(text: str, max_chars: int) -> str:
    """Control and format characters out, whitespace collapsed, capped at a word boundary."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(
        " " if ch in "\t\n\r\v\f" else ch
        for ch in text
        if ch in "\t\n\r\v\f" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn")
    )
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars)
        text = text[: cut if cut > max_chars // 2 else max_chars].rstrip() + " …"
    return text


def safe_alt_text(text: str | None, max_chars: int = 1000) -> str:
    """AltText as it may appear inside a prompt (without delimiters)."""
    return neutralise_special_tokens(clean_text(text or "", max_chars))


def delimited(text: str | None, max_chars: int = 1000) -> str:
    """The AltText block a template's `{alt_text}` slot receives."""
    return f"{OPEN}\n{safe_alt_text(text, max_chars)}\n{CLOSE}"


def delimited_caption(text: str | None, max_chars: int = 2000) -> str:
    """A model-written caption placed in a prompt: cleaned like AltText, in its own delimiters,
    since a caption may echo text that was in the image or in the AltText."""
    return f"<caption>\n{safe_alt_text(text, max_chars)}\n</caption>"
