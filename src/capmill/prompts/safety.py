"""Placing untrusted text inside a prompt: one function, `untrusted`, for every such text.

Untrusted is everything capmill did not write itself: the AltText (whoever made the web page),
captions of other models (they may echo text that was in the image or in the AltText), text
read from the image (OCR), and a record's metadata (a title, tags or a description, whoever
uploaded the file). Each enters a prompt only through `untrusted(text, kind)`:

1. cleaned: control and format characters removed, whitespace collapsed to single spaces (so
   the text is one line and cannot start a turn of its own), length capped at a word boundary;
2. neutralised: every special-token shape of the model families capmill drives (chat-turn
   markers, image placeholders) gets visible look-alike brackets, and anything that reads as one
   of capmill's own delimiters — any kind, any case, with spaces, attributes, look-alike or
   HTML-escaped brackets, closed or not — is rewritten as `(/alt text)`, which is no delimiter;
3. wrapped in `<KIND>` … `</KIND>` on lines of their own, which the templates tell the model to
   read as quoted data.

Why fixed delimiters, neutralised before wrapping, rather than per-request random boundaries:
after step 2 the text holds no delimiter of any kind, so the only delimiters in a prompt are
the ones capmill put there, whatever the text says; a random boundary adds nothing to that,
while it would make every prompt differ between runs (a resumed or repeated run must send the
same prompts and get the same captions, and backends cache rendered prompts). The guarantee
needs one more rule, kept by `capmill.backends.common.neutralise_for`: backends neutralise the
model's special tokens in the whole prompt but never rewrite capmill's delimiters (doing so
made the real `</alt_text>` identical to a neutralised forgery of it). Tests render every
hostile AltText through every template and backend and count the delimiters that arrive.
"""

from __future__ import annotations

import re
import unicodedata

# The kinds of untrusted text a prompt may hold; each is wrapped in <kind> … </kind>.
KINDS = ("alt_text", "caption", "ocr_text", "metadata")
OPEN, CLOSE = "<alt_text>", "</alt_text>"  # the AltText's delimiters (kept for templates' docs)


def delimiters() -> list[str]:
    """Every delimiter string capmill writes around untrusted text."""
    return [d for kind in KINDS for d in (f"<{kind}>", f"</{kind}>")]


# Special-token shapes of the model families capmill drives (LLaVA, Qwen2-VL/2.5-VL, Idefics3/
# SmolVLM, BLIP, Llama, Mistral, Gemma, Phi, DeepSeek). A match gets look-alike brackets
# ("<|im_start|>" → "‹|im_start|›"): no tokenizer sees the special token, a reader still sees
# what the text said. capmill's own delimiters are not in this list on purpose (see above).
_MODEL_TOKENS = re.compile(
    r"<\|[^|<>\n]{1,40}\|>"  # <|im_start|>, <|image_pad|>, <|vision_start|>, <|eot_id|>, <|endoftext|>
    r"|<｜[^｜<>\n]{1,40}｜>"  # DeepSeek's full-width bars: <｜begin▁of▁sentence｜>
    r"|<\s*/?\s*(?:image|video|audio|fake_token_around_image|global-img|row_\d+_col_\d+|end_of_utterance|s|unk|pad|bos|eos|start_of_turn|end_of_turn|start_of_image|end_of_image)\s*>"
    r"|\[/?(?:INST|SYS|IMG|IMG_BREAK|IMG_END)\]"
    r"|<<\s*/?SYS\s*>>",
    re.IGNORECASE,
)

# Anything a reader (or a model) could take for one of capmill's delimiters: an opening bracket
# (ASCII, full-width, small, angle, guillemet, square or curly, or HTML-escaped), an optional
# slash, a delimiter name — in any case, with `_`, `-`, a space or nothing between its words,
# letters possibly swapped for full-width, Cyrillic or Greek look-alikes — and up to 30
# characters of attributes before a closing bracket (which may be missing).
_BRACKET_OPEN = "(?:[<\uff1c\ufe64\u2039\u2329\u3008\u27e8\u00ab\\[{]|&lt;|&#0*60;|&#x0*3c;)"
_BRACKET_CLOSE = "(?:[>\uff1e\ufe65\u203a\u232a\u3009\u27e9\u00bb\\]}]|&gt;|&#0*62;|&#x0*3e;)"
_HOMOGLYPHS = {"a": "\u0430\u03b1", "c": "\u0441\u03f2", "e": "\u0435\u03b5", "i": "\u0456\u03b9",
               "o": "\u043e\u03bf0", "p": "\u0440\u03c1", "t": "\u0442\u03c4", "x": "\u0445\u03c7",
               "n": "\u03b7", "l": "\u04cf1|", "r": "\u0433"}


def _letters(word: str) -> str:
    """`word` as a pattern that also matches its full-width and look-alike spellings."""
    return "".join(f"[{ch}{chr(ord(ch) + 0xFEE0)}{_HOMOGLYPHS.get(ch, '')}]" for ch in word)


_SEP = r"[\s_\-\uff3f]*"
_NAME = "(?:" + "|".join(f"(?P<{kind}>" + _SEP.join(_letters(w) for w in kind.split("_")) + ")" for kind in KINDS) + ")"
_FORGED = re.compile(
    _BRACKET_OPEN + r"\s*(?P<slash>[/\\\uff0f]?)\s*" + _NAME + r"(?!\w)(?:[^<>\n]{0,30}?" + _BRACKET_CLOSE + ")?",
    re.IGNORECASE,
)


def _lookalike(match: re.Match) -> str:
    return match.group(0).replace("<", "‹").replace(">", "›").replace("[", "⟦").replace("]", "⟧")


def _defused(match: re.Match) -> str:
    kind = next(k for k in KINDS if match.group(k))
    return f"({'/' if match.group('slash') else ''}{kind.replace('_', ' ')})"


def forged_delimiter(text: str) -> str | None:
    """The first thing in `text` that reads as one of capmill's delimiters, or None."""
    m = _FORGED.search(text)
    return m.group(0) if m else None


def neutralise_model_tokens(text: str) -> str:
    """`text` with the special-token shapes of common model families broken. What backends apply
    to whole prompts; it leaves capmill's delimiters alone."""
    return _MODEL_TOKENS.sub(_lookalike, text)


def neutralise_untrusted(text: str) -> str:
    """`text` with model special tokens broken and every form of capmill's delimiters defused.
    Idempotent: neutralising neutralised text changes nothing."""
    return _FORGED.sub(_defused, neutralise_model_tokens(text))


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


def safe_text(text: str | None, max_chars: int = 1000) -> str:
    """Untrusted text as it may appear inside a prompt, before it is wrapped: cleaned and
    neutralised. Use `untrusted` to place it."""
    return neutralise_untrusted(clean_text(text or "", max_chars))


safe_alt_text = safe_text  # the name the fuse stage and users' stages know


def untrusted(text: str | None, kind: str, max_chars: int = 1000) -> str:
    """The block a template slot receives for untrusted text of `kind` (one of KINDS): cleaned,
    neutralised, and wrapped in capmill's delimiters for that kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of untrusted text {kind!r}; one of {', '.join(KINDS)}")
    return f"<{kind}>\n{safe_text(text, max_chars)}\n</{kind}>"


def delimited(text: str | None, max_chars: int = 1000) -> str:
    """The AltText block a template's `{alt_text}` slot receives."""
    return untrusted(text, "alt_text", max_chars)


def delimited_caption(text: str | None, max_chars: int = 2000) -> str:
    """A model-written caption placed in a prompt: untrusted like the AltText, since a caption
    may echo text that was in the image or in the AltText."""
    return untrusted(text, "caption", max_chars)


def source_text(text: str | None, max_chars: int) -> str:
    """Untrusted text as output guards read it: raw (line breaks kept, so a fake turn still looks
    like one), bounded to cover what a prompt capped at `max_chars` held, even when whitespace and
    control characters were collapsed out of it."""
    return (text or "")[: 4 * max_chars + 64]


def without_untrusted(prompt: str) -> str:
    """`prompt` with every untrusted block cut out: the instructions capmill wrote, which an
    output guard checks the model did not echo."""
    for kind in KINDS:
        prompt = re.sub(rf"<{kind}>\n.*?\n</{kind}>", " ", prompt, flags=re.DOTALL)
    return prompt
