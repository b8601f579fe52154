"""Timestamped text: transcript word blocks, and captions with times parsed from model output.

HowToCaption (Shvetsova et al., "HowToCaption: Prompting LLMs to Transform Video Annotations at
Scale", ECCV 2024) hands a language model blocks of about 200 words of narration, each line
prefixed with its time, and asks for captions prefixed the same way; these functions are the
two ends of that exchange.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(slots=True)
class TimedText:
    start: float
    end: float
    text: str


@dataclass(slots=True)
class Block:
    """Consecutive transcript segments of at most a word budget."""

    segments: list[TimedText] = field(default_factory=list)

    @property
    def start(self) -> float:
        return self.segments[0].start

    @property
    def end(self) -> float:
        return self.segments[-1].end

    @property
    def words(self) -> int:
        return sum(len(s.text.split()) for s in self.segments)


def word_blocks(segments: list[TimedText], max_words: int) -> list[Block]:
    """Segments grouped in order into blocks of at most `max_words` words; a segment longer
    than the budget is a block of its own."""
    blocks: list[Block] = []
    current = Block()
    for segment in segments:
        if not segment.text.strip():
            continue
        words = len(segment.text.split())
        if current.segments and current.words + words > max_words:
            blocks.append(current)
            current = Block()
        current.segments.append(segment)
    if current.segments:
        blocks.append(current)
    return blocks


def format_seconds(t: float) -> str:
    return f"{t:.0f}s" if abs(t - round(t)) < 0.05 else f"{t:.1f}s"


# "12s: text", "12.5 s - text", "[12s] text", "(12 sec) text", "00:12: text", "1:02:03 text"
_TIMED = re.compile(
    r"^\s*[-*•]?\s*[\[(]?\s*(?:(?P<hms>\d{1,2}(?::\d{1,2}){1,2})|(?P<sec>\d+(?:\.\d+)?)\s*(?:s|sec|secs|seconds)?)"
    r"\s*[\])]?\s*[:\-–—]?\s+(?P<text>\S.*)$",
    re.IGNORECASE,
)


def _seconds(match: re.Match) -> float:
    if match.group("hms"):
        value = 0.0
        for part in match.group("hms").split(":"):
            value = value * 60 + int(part)
        return value
    return float(match.group("sec"))


def parse_timed_lines(text: str, start: float, end: float) -> list[TimedText]:
    """Captions with times from a model's reply: one per line that starts with a time (clamped
    into [start, end]); lines without a time continue the caption before them, or are dated
    `start` when they come first. Each caption's end is the next one's time (the last: `end`)."""
    timed: list[tuple[float, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        match = _TIMED.match(line)
        if match is not None:
            t = min(max(_seconds(match), start), end)
            timed.append((t, match.group("text").strip()))
        elif timed:
            timed[-1] = (timed[-1][0], f"{timed[-1][1]} {line}")
        else:
            timed.append((start, line))
    out = []
    for i, (t, caption) in enumerate(timed):
        following = timed[i + 1][0] if i + 1 < len(timed) else end
        caption = caption.strip().strip('"').strip()
        if caption:
            out.append(TimedText(t, max(t, following), caption))
    return out
