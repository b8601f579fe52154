"""CLIP text-token counts, without torch.

CLIP's text tower reads at most 77 tokens of OpenAI's byte-level BPE, so "fits CLIP" is a count
in that BPE. open_clip's tokenizer gives it but imports torch; this module counts the same
tokens with the merge table alone, so length targets and caption statistics work in any
install (an HTTP-only one too) and cost no torch import.

Method: clean the text as CLIP does (ftfy, HTML entities unescaped twice, whitespace collapsed,
lower case), split it into words with CLIP's pattern, map each word's UTF-8 bytes to printable
characters, mark the word's end, and apply merges lowest rank first until none applies; a
word's token count is the number of pieces left. The merge table is OpenAI CLIP's
(`data/clip_bpe_simple_vocab_16e6.txt.gz`, the file open_clip also ships; MIT licence,
Copyright (c) 2021 OpenAI). The counts equal open_clip's `SimpleTokenizer` (tested).
"""

from __future__ import annotations

import gzip
import html
from functools import cache, lru_cache
from importlib import resources

# The merges the vocabulary was built with: 49,152 tokens less the 256 byte symbols and the two
# special tokens. The file holds a header line and more merges than were used.
N_MERGES = 49152 - 256 - 2
SPECIAL = ("<start_of_text>", "<end_of_text>")
# Start and end tokens wrap every text the tower reads.
WRAP = 2


def byte_symbols() -> list[str]:
    """The printable stand-in of every byte value: bytes that are printable Latin-1 stand for
    themselves; the others take code points from 256 upwards, in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    spare = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(spare)) for b in range(256)]


class ClipBpe:
    def __init__(self, merges: list[tuple[str, str]]):
        import regex

        self.rank = {pair: i for i, pair in enumerate(merges)}
        self.symbols = byte_symbols()
        self.words = regex.compile(
            "|".join(SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
        self.pieces = lru_cache(maxsize=1 << 16)(self._pieces)

    @classmethod
    def load(cls) -> ClipBpe:
        data = resources.files("capmill").joinpath("data", "clip_bpe_simple_vocab_16e6.txt.gz").read_bytes()
        lines = gzip.decompress(data).decode("utf-8").split("\n")[1:N_MERGES + 1]
        return cls([tuple(line.split()) for line in lines])

    @staticmethod
    def clean(text: str) -> str:
        import ftfy

        return " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()

    def count(self, text: str) -> int:
        """BPE tokens of `text`, without the start and end tokens."""
        return sum(self.pieces(word) for word in self.words.findall(self.clean(text)))

    def _pieces(self, word: str) -> int:
        if word in SPECIAL:
            return 1
        parts = [self.symbols[b] for b in word.encode("utf-8")]
        parts[-1] += "</w>"
        while len(parts) > 1:
            ranked = [self.rank.get(pair, N_MERGES) for pair in zip(parts, parts[1:])]
            best = min(ranked)
            if best == N_MERGES:
                break
            pair = (parts[ranked.index(best)], parts[ranked.index(best) + 1])
            merged, i = [], 0
            while i < len(parts):  # every occurrence, left to right, without overlaps
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return len(parts)


@cache
def clip_bpe() -> ClipBpe:
    return ClipBpe.load()


@lru_cache(maxsize=8192)  # a caption is counted by the length check and again by the report
def count_clip_tokens(text: str) -> int:
    """CLIP tokens of `text` as the text tower reads it, start and end tokens included (so a
    count above 77 means CLIP truncates it)."""
    return clip_bpe().count(text) + WRAP
