"""The text patterns the output guards look for, kept apart from the checks that use them.

Two sets for instructions: `OUTPUT_INSTRUCTIONS` are strong signs that a generated caption
talks to or as a model (almost never in a real caption), `SOURCE_INSTRUCTIONS` add the weaker
signs that an input (AltText, OCR text) is trying to instruct the model; the latter only arm the
check that the output does not carry out what the input asked, so they may be broader.
"""

from __future__ import annotations

import re

I = re.IGNORECASE

# Openings of a model declining or talking about itself instead of captioning (matched at the
# start of the text).
DEFAULT_REFUSALS = [
    r"i'?m sorry", r"i am sorry", r"sorry,? (?:but )?i", r"i apologi[sz]e", r"as an ai\b", r"as a language model",
    r"as an? (?:ai )?assistant", r"i (?:can ?not|can't|won't|am unable to|'m unable to|am not able to)",
    r"unfortunately,? i", r"i do not have (?:the ability|access)", r"(?:here is|here's) (?:the|a|your) (?:fused |new |merged )?caption",
    r"i'?m afraid", r"i'?m not able to", r"(?:this|the) (?:image|request) (?:violates|goes against|is not appropriate)",
]

# Refusals anywhere in the text ("A dog. I'm sorry, I cannot describe more.").
REFUSAL_ANYWHERE = re.compile(
    r"\b(?:i'?m|i am) (?:sorry|afraid|unable|not able)\b"
    r"|\bi (?:can ?not|can't|won't|will not|am unable to) (?:help|assist|describe|provide|comply|fulfil|fulfill|see|view|"
    r"identify|process|caption|do that|answer)\b"
    r"|\bas an? (?:ai|language model|ai language model|ai assistant)(?:,|\s+i\b)",  # not "works as an AI engineer"
    I,
)

_IGNORE = r"(?:ignore|ignoring|disregard|forget|override)"
_PREVIOUS = r"(?:all |any |the |your |these |those )?(?:previous|prior|above|earlier|preceding|original|system)"
_ORDERS = r"(?:instructions?|prompts?|rules|directions|guidelines|directives|commands?|orders|task)"

# Strong signs in any text: what only an injection (or a model echoing one) writes; a sign in a
# photo rarely says any of it ("You are now entering …" does, so that one is for inputs only).
_STRONG = [
    rf"\b{_IGNORE}\b[^.!?\n]{{0,30}}\b{_PREVIOUS}\b[^.!?\n]{{0,20}}\b{_ORDERS}\b",
    rf"\b{_IGNORE} (?:everything|the above|all (?:of )?(?:the )?(?:above|previous|prior)|the (?:image|picture|photo|caption|task))\b",
    r"\bsystem (?:prompt|override)\b|\bdeveloper mode\b|\bjailbr[eo]a?k|\bprompt injection\b|\bDAN mode\b",
    r"\bas instructed\b|\b(?:new|hidden|secret|additional|updated) (?:instructions?|task|system prompt)\s*:",
    r"\b(?:include|insert|append|prepend) (?:this|the following) (?:sentence|text|phrase|line|word)",
    r"\brepeat (?:this|after me|the following)\b",
    r"\bend of (?:the )?(?:data|input|alt ?text|caption|prompt)\b",
    # Other languages: "ignore the instructions" and "reply only".
    r"\bignorier\w*\b.{0,40}\banweisung|\bvergiss\b.{0,40}\b(?:anweisung|bild)|\bantworte nur\b",
    r"игнорир\w*.{0,40}(?:инструкц|указани)|забудь.{0,40}(?:инструкц|указани)|ответь только",
    r"(?:忽略|无视|忽視).{0,20}(?:指令|指示|说明|說明)|只回复|只回答",
    r"تجاهل.{0,40}التعليمات",
    r"\bignore[zr]?\b.{0,40}\binstructions\b|\bignora\w*\b.{0,40}\b(?:instrucciones|istruzioni|instruções)\b",
]

# The strong signs once every space and punctuation mark is gone: OCR engines often read a
# printed line without its spaces ("IGNOREALLPREVIOUSINSTRUCTIONS"), which no word-bounded
# pattern matches. Only phrases long and odd enough never to occur inside ordinary words.
SPACELESS_INSTRUCTIONS = re.compile(
    r"(?:ignore|disregard|forget|override)(?:all|any|the|your|these|those)*"
    r"(?:previous|prior|above|earlier|preceding|original|system)"
    r"(?:instructions?|prompts?|rules|directions|guidelines|directives|commands?|orders|task)"
    r"|(?:ignore|disregard|forget)(?:all|any|the|your)*(?:instructions|prompts)"
    r"|systemprompt|developermode|promptinjection|youarenow(?:dan|free|unrestricted|nolonger)",
    I,
)

# Chat markers that carry a role.
_MARKERS = [
    r"(?:<|‹)\|?(?:im_start|start_header_id|system|assistant|user)\|?(?:>|›)",
    r"(?:<|‹)(?:start_of_turn|end_of_turn|end_of_utterance)(?:>|›)",
    r"(?:\[|⟦)/?INST(?:\]|⟧)|<<\s*/?SYS\s*>>",
]
# Role labels of a fake turn: an output that opens one (or starts a sentence or line with one)
# speaks as a chat participant; an input has one after a line break or a closing bracket (at
# the start of an AltText, "Assistant: Jane Doe" is a photo credit).
_OUTPUT_TURN = r"(?:^|[\n.!?>\]›|｜])\s*(?:assistant|system|user)\s*:"
_SOURCE_TURN = r"(?:\n|[>\]›|｜])\s*(?:assistant|system)\s*:"

OUTPUT_INSTRUCTIONS = re.compile("|".join(_STRONG + _MARKERS + [_OUTPUT_TURN]), I)

# Image placeholders a text has no business carrying (in an input they try to make the model
# see another picture; a generated caption that has them echoes the prompt's machinery).
PLACEHOLDERS = re.compile(
    r"(?:<|‹)\s*(?:image|fake_token_around_image|global-img|row_\d+_col_\d+)\s*(?:>|›)"
    r"|(?:<|‹)\|(?:image_pad|vision_start|vision_end|video_pad)\|(?:>|›)|(?:\[|⟦)IMG(?:\]|⟧)",
    I,
)

# capmill's delimiters, raw or as `neutralise_untrusted` rewrites them.
DELIMITER_ECHO = re.compile(r"(?:<|‹)\s*/?\s*(?:alt_text|caption|ocr_text)\s*(?:>|›)|\(/?(?:alt|ocr) text\)", I)

# Weaker signs, for inputs only: words addressed to the model saying what it should write.
SOURCE_INSTRUCTIONS = re.compile("|".join(_STRONG + _MARKERS + [_SOURCE_TURN] + [
    r"\byou are now (?:a|an|in (?:developer|god|dan|jailbreak)|dan|free|unrestricted|no longer)\b"
    r"|\bfrom now on,? (?:you|reply|answer|respond|only|write)\b",
    r"\b(?:reply|respond|answer|output)\b(?: \w+){0,3} (?:only|just|exactly|verbatim)\b",
    r"\b(?:reply|respond|answer|output)\b(?: \w+){0,2} (?:in json|with the word|nothing else|the following)\b",
    r"\binstead\b[^.!?\n]{0,60}\b(?:describ\w*|caption\w*|write|say|output)\b"
    r"|\b(?:describ\w*|write|say|output)\b[^.!?\n]{0,60}\binstead\b",
    r"\b(?:do not|don't|never) (?:describe|caption)\b",
    r"\b(?:every|each|your) (?:caption|description|answer|response|reply|output)s? (?:must|should|has to|needs to)\b",
    r"\b(?:end|finish|start|begin|close|sign)\b[^.!?\n]{0,20}\b(?:caption|answer|reply|response|description|output)s?"
    r"\b[^.!?\n]{0,10}\bwith\b",
    r"\b(?:append|add|attach|insert|include|put|mention|write)\b[^!?\n]{0,80}\b(?:to|in|into|at the end of) "
    r"(?:the|your|each|every) (?:caption|answer|reply|response|description|output)s?\b",
    r"\brefuse to (?:describe|caption|answer)\b|\brepeat it\b",
]), I)
# "reply HACKED": an instruction verb followed by a shouted word (case matters here).
SHOUTED_ORDER = re.compile(r"\b(?:[Rr]eply|[Rr]espond|[Aa]nswer|[Oo]utput|[Pp]rint)\s+[\"'“«]?[A-Z]{4,}\b"
                           r"|\b(?:[Nn]ow|[Oo]nly|[Jj]ust)\s+(?:say|write)\s+[\"'“«]?[A-Z]{4,}\b")

# Look-alike letters (Cyrillic and Greek) folded to Latin before matching the Latin patterns,
# so "Іgnore рrevious іnstructions" reads as what it is.
CONFUSABLES = str.maketrans("аАсСеЕіІоОрРхХуКкМТНВ" + "αοερτνικ", "aAcCeEiIoOpPxXyKkMTHB" + "aoeptvik")

# Words of an injected input that say how to answer rather than what: never evidence that an
# output obeyed it (a real caption may say "image" or "photo").
INSTRUCTION_WORDS = frozenset("""
ignore ignoring disregard forget override skip previous prior above earlier preceding original instruction instructions
prompt prompts rule rules task tasks direction directions reply respond responding answer answers output outputs print
return say write writing type only just exactly verbatim word words following instead describe describing description
caption captions captioning text texts alt image images picture pictures photo photos photograph photographs repeat
include including sentence sentences start end data section new now system user assistant developer mode override
must should every each nothing else stop please format json tell everything all anything never don't not model
additional real hidden secret updated line phrase this that these those you your yours forever already perfect
important instead rather than then first last again always here there it its the and with for from into onto
refuse apologise apologize apologising content forbidden contains contain describe added add
""".split())

# Web addresses: with a scheme, www., a bare IPv4 address, an e-mail address, or a host name
# under a common top-level domain.
URL = re.compile(
    r"\b(?:https?|ftp|file|javascript|data|vbscript)://[^\s<>\"'\])]+"
    r"|\bwww\.[a-z0-9-]+(?:\.[a-z0-9-]+)+[^\s<>\"'\])]*"
    r"|\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?(?:/[^\s<>\"']*)?"
    r"|\b[\w.+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)+"
    r"|\b[a-z0-9][a-z0-9-]{0,62}(?:\.[a-z0-9-]{1,63})*\.(?:com|net|org|biz|info|io|co|ru|cn|de|uk|xyz|top|site|"
    r"online|app|dev|ly|me|tk|gl|us|eu|fr|jp|ai|tv|cc|ws|shop|store|link|click|onion)\b(?:/[^\s<>\"']*)?",
    I,
)

# Markup: HTML/XML tags, HTML entities, Markdown links and images.
MARKUP = re.compile(
    r"<\s*/?\s*[a-z][\w:-]*(?:\s+[^<>]*)?/?\s*>"
    r"|&(?:lt|gt|amp|quot|#\d+|#x[0-9a-f]+);"
    r"|!?\[[^\]\n]{0,100}\]\([^)\s]{1,300}\)",
    I,
)
# Markup that runs code in a page: never acceptable, even when an input had it.
ACTIVE_MARKUP = re.compile(
    r"<\s*/?\s*(?:script|iframe|object|embed|svg|img|link|meta|style|form|input|base|frame)\b"
    r"|\bon[a-z]+\s*=|javascript:|vbscript:|data:text/html",
    I,
)

# Code: fences, calls of common functions, arrows, shell and SQL idioms, JSON objects.
CODE = re.compile(
    r"```|\b(?:alert|eval|exec|fetch|require|prompt|confirm|print|system|popen|open)\(\s*[\"'`\d)]"
    r"|\b(?:console|document|window|process|os|subprocess|sys)\.[a-z_]+\("
    r"|\bfunction\s*\w*\s*\(|\bdef\s+\w+\s*\(|\blambda\s+\w*\s*:|=>|\$\(|\$\{"
    r"|\b(?:rm\s+-rf|curl\s+-|wget\s+http|sudo\s+\w|chmod\s+\d)"
    r"|\b(?:drop\s+table|select\s+\*\s+from|union\s+select|insert\s+into)\b|;\s*--"
    r"|<\?php|#!/|\{\s*\"[^\"\n]{1,40}\"\s*:",
    I,
)

# Words a sentence does not end on: a text stopping after one was cut off.
DANGLING = frozenset("""
a an the of and or but with to in on at by for from into onto its their his her our your my is are was were
which that whose while as than over under near between behind including such very
""".split())
TERMINAL = tuple('.!?…。！？"”»)]\'’')
