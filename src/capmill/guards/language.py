"""Which language a short text is in, cheaply and offline: writing system, then stopwords.

Good enough to tell a caption that switched language (a model obeying "answer in Russian", or
drifting into another language) from one in the expected language, and nothing more:

1. The writing system of the letters (Latin, Cyrillic, Greek, Arabic, Hebrew, Han, Kana, Hangul,
   Devanagari, Thai), from Unicode character names. A text whose letters are mostly in another
   system than the expected language's is in another language. Quoted foreign words (a sign
   reading "Москва") stay a minority and pass.
2. For Latin-script languages with a stopword list here (en, de, fr, es, it, pt, nl), the
   function words of each: a text is called another language only when that language's
   stopwords clearly outnumber the expected one's (at least 3, and twice as many). Words that are
   stopwords in several of these languages ("in", "a", "de") count for none.

Short texts (fewer than 4 letters, or a tag list without function words) are undetermined and
pass. Languages without a stopword list are checked by writing system only.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from functools import cache

# Writing system of each language code the guard accepts.
SCRIPTS: dict[str, str] = {
    **dict.fromkeys(
        "en de fr es it pt nl pl cs sk sl hr sv da no nb fi et lv lt hu ro tr vi id ms tl sq is ga cy eu ca gl af sw".split(),
        "Latin"),
    **dict.fromkeys("ru uk be bg sr mk kk mn".split(), "Cyrillic"),
    "el": "Greek", "ar": "Arabic", "fa": "Arabic", "ur": "Arabic", "he": "Hebrew", "yi": "Hebrew",
    "zh": "Han", "ja": "Japanese", "ko": "Hangul", "hi": "Devanagari", "mr": "Devanagari", "ne": "Devanagari",
    "th": "Thai",
}

# Language names (as a fuse stage's `language` names them) → codes.
NAMES: dict[str, str] = {
    "english": "en", "german": "de", "deutsch": "de", "french": "fr", "français": "fr", "spanish": "es",
    "español": "es", "italian": "it", "portuguese": "pt", "dutch": "nl", "polish": "pl", "czech": "cs",
    "swedish": "sv", "danish": "da", "norwegian": "no", "finnish": "fi", "hungarian": "hu", "romanian": "ro",
    "turkish": "tr", "vietnamese": "vi", "indonesian": "id", "russian": "ru", "ukrainian": "uk",
    "bulgarian": "bg", "serbian": "sr", "greek": "el", "arabic": "ar", "persian": "fa", "urdu": "ur",
    "hebrew": "he", "chinese": "zh", "japanese": "ja", "korean": "ko", "hindi": "hi", "thai": "th",
}

_STOPWORDS_RAW = {
    "en": "the and of with is are was were on at from this that these those its his her their which while by for "
          "an to be has have it as into onto near behind over under next front there some two three four "
          "wearing holding sitting standing shows showing background foreground left right top bottom who "
          "what where when up down out off across against along around between through",
    "de": "der die das und mit ist sind ein eine einer einem einen auf im vor zwei drei nicht sich von zu den dem des "
          "bei nach über unter neben hinter wird auch oder alle nur ich du wir ihr sie es am zum zur dieser diese "
          "dieses aus",
    "fr": "le les et du des une est sont sur dans avec pour au aux ce cette ces qui pas il elle un deux trois "
          "son sa ses leur par mais où devant derrière sous",
    "es": "el los las y del una con por para es está están sobre al que su sus unos unas dos tres muy "
          "pero como donde delante detrás bajo entre",
    "it": "il lo gli di della delle del una con per è sono che sul sulla nel nella un due tre suo sua "
          "questo questa dietro sotto tra fra",
    "pt": "o os as e do da dos das uma com em no na é são que um dois três seu sua para ao pelo pela "
          "atrás sob entre",
    "nl": "het de een en van met op is zijn in bij voor die dat niet twee drie naar ook maar achter onder "
          "naast boven",
}


@cache
def stopwords() -> dict[str, frozenset[str]]:
    """Stopwords per language, each without the words another list also has."""
    sets = {lang: set(words.split()) for lang, words in _STOPWORDS_RAW.items()}
    seen = Counter(w for s in sets.values() for w in s)
    return {lang: frozenset(w for w in s if seen[w] == 1) for lang, s in sets.items()}


@cache
def _script_of_char(ch: str) -> str | None:
    name = unicodedata.name(ch, "")
    for prefix, script in (("LATIN", "Latin"), ("CYRILLIC", "Cyrillic"), ("GREEK", "Greek"), ("ARABIC", "Arabic"),
                           ("HEBREW", "Hebrew"), ("CJK", "Han"), ("HIRAGANA", "Kana"), ("KATAKANA", "Kana"),
                           ("HANGUL", "Hangul"), ("DEVANAGARI", "Devanagari"), ("THAI", "Thai")):
        if name.startswith(prefix):
            return script
    return "Other" if ch.isalpha() else None


def script_counts(text: str) -> Counter:
    """Letters per writing system."""
    return Counter(s for s in map(_script_of_char, text) if s is not None)


def _accepts(script: str) -> set[str]:
    """Writing systems a language written in `script` uses."""
    return {"Japanese": {"Han", "Kana"}, "Hangul": {"Hangul", "Han"}}.get(script, {script})


def code_for(language: str | None) -> str | None:
    """A language code from a code or a name ("de", "German"), or None when unknown."""
    if not language:
        return None
    key = language.strip().lower()
    return key if key in SCRIPTS else NAMES.get(key)


def detect(text: str) -> str | None:
    """The language of `text` where the heuristic can tell (None when it is unsure): a code for
    Latin-script languages with stopwords, the main language of the writing system otherwise
    (Cyrillic → ru, Arabic → ar: only the writing system is compared for these, so the pick
    among languages sharing it does not matter)."""
    counts = script_counts(text)
    letters = sum(counts.values())
    if letters < 4:
        return None
    script, n = counts.most_common(1)[0]
    if n < 0.5 * letters:
        return None
    if script == "Kana" or (script == "Han" and counts["Kana"] > 0.1 * letters):
        return "ja"
    if script == "Latin":
        hits = stopword_hits(text)
        best, count = hits.most_common(1)[0] if hits else (None, 0)
        second = hits.most_common(2)[1][1] if len(hits) > 1 else 0
        return best if count >= 2 and count >= 2 * second else None
    return {"Han": "zh", "Hangul": "ko", "Greek": "el", "Thai": "th", "Hebrew": "he", "Cyrillic": "ru",
            "Arabic": "ar", "Devanagari": "hi"}.get(script)


def stopword_hits(text: str) -> Counter:
    tokens = [t.strip(".,;:!?\"'()[]«»“”‘’") for t in text.lower().split()]
    hits: Counter = Counter()
    for lang, words in stopwords().items():
        n = sum(1 for t in tokens if t in words)
        if n:
            hits[lang] = n
    return hits


def mismatch(text: str, expected: str) -> str | None:
    """Why `text` is not in language `expected` (a code of SCRIPTS), or None when it is or the
    heuristic cannot tell."""
    want = SCRIPTS.get(expected)
    if want is None:
        return None
    counts = script_counts(text)
    letters = sum(counts.values())
    if letters < 4:
        return None
    share = sum(counts[s] for s in _accepts(want)) / letters
    if share < 0.5:
        script = counts.most_common(1)[0][0]
        return f"written in {script} script, expected {expected}"
    if want == "Latin" and expected in stopwords():
        hits = stopword_hits(text)
        own = hits.get(expected, 0)
        other, count = max(((lang, n) for lang, n in hits.items() if lang != expected), key=lambda kv: kv[1],
                           default=(None, 0))
        if other is not None and count >= 3 and count >= 2 * max(own, 1):
            return f"reads as {other} ({count} {other} function words, {own} {expected}), expected {expected}"
    return None
