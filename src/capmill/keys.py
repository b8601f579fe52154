"""The names a stage reads and writes in a `Sample`, as typed keys.

Three kinds, after the record's own layout: a caption (`captions["dsc"]`), a score
(`scores["clip:dsc"]`), and a record field (`alt_text`, `image`, `video` and `audio` from the input,
`regions` from a region stage). A stage declares its reads and writes with these
(`StageConfig.io`), and `capmill.chain` checks that every read is written by an earlier stage or
provided by the input before a run starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

CAPTION, SCORE, FIELD = "caption", "score", "field"
KINDS = (FIELD, CAPTION, SCORE)


@dataclass(frozen=True, order=True, slots=True)
class Key:
    kind: str  # CAPTION, SCORE or FIELD
    name: str

    def __str__(self) -> str:
        if self.kind == CAPTION:
            return f'captions["{self.name}"]'
        if self.kind == SCORE:
            return f'scores["{self.name}"]'
        return self.name


def caption(name: str) -> Key:
    return Key(CAPTION, name)


def score(name: str) -> Key:
    return Key(SCORE, name)


# Record fields. `image` is the decoded image: provided by inputs that carry images when
# `image.decode` is on. `video` is a video's sampled frames: provided by inputs that may hold
# videos when `video.decode` is on (whether a given sample is an image or a video is known only
# when it is read; a stage meeting the other kind fails that sample with the reason). `audio`
# is an audio sample's decoded waveform, provided the same way when `audio.decode` is on.
ALT_TEXT = Key(FIELD, "alt_text")
IMAGE = Key(FIELD, "image")
# Region captions of the image (`Sample.regions`: box, caption, score), written by `regions`.
REGIONS = Key(FIELD, "regions")
VIDEO = Key(FIELD, "video")
AUDIO = Key(FIELD, "audio")
# The decoded media of each kind, by the kind's name.
MEDIA = {"image": IMAGE, "video": VIDEO, "audio": AUDIO}


def text(name: str) -> Key:
    """The key of a text field as configs name it: `alt_text` is the AltText, anything else a caption."""
    return ALT_TEXT if name == ALT_TEXT.name else caption(name)


def numbered(prefix: str, available: Iterable[Key]) -> list[Key]:
    """The captions `PREFIX.0`, `PREFIX.1`, … among `available`, in index order: the candidates a
    `candidates` stage wrote under `store_as: PREFIX`."""
    found = []
    for key in available:
        head, dot, index = key.name.rpartition(".")
        if key.kind == CAPTION and dot and head == prefix and index.isdigit():
            found.append((int(index), key))
    return [key for _, key in sorted(found)]


def names(keys: Iterable[Key], kind: str) -> list[str]:
    return sorted(k.name for k in keys if k.kind == kind)


def describe(keys: Iterable[Key]) -> str:
    """`captions: dsc, ssc; scores: clip:dsc; fields: alt_text, image` (empty kinds say `none`)."""
    keys = list(keys)
    plural = {FIELD: "fields", CAPTION: "captions", SCORE: "scores"}
    return "; ".join(f"{plural[kind]}: {', '.join(names(keys, kind)) or 'none'}" for kind in KINDS)


def to_json(keys: Iterable[Key]) -> dict[str, list[str]]:
    """`{"captions": [...], "scores": [...], "fields": [...]}`, as `_run.json` stores them."""
    keys = list(keys)
    return {"captions": names(keys, CAPTION), "scores": names(keys, SCORE), "fields": names(keys, FIELD)}


def from_json(data: dict[str, Any]) -> frozenset[Key]:
    return frozenset(
        [caption(n) for n in data.get("captions", [])]
        + [score(n) for n in data.get("scores", [])]
        + [Key(FIELD, n) for n in data.get("fields", [])]
    )


@dataclass(frozen=True)
class StageIO:
    """What one stage reads (each must be available when it runs) and writes.

    A stage that reads a key only when it happens to be there (e.g. a score it would otherwise
    compute) does not list it in `reads`.
    """

    reads: frozenset[Key] = field(default_factory=frozenset)
    writes: frozenset[Key] = field(default_factory=frozenset)

    def __init__(self, reads: Iterable[Key] = (), writes: Iterable[Key] = ()):
        object.__setattr__(self, "reads", frozenset(reads))
        object.__setattr__(self, "writes", frozenset(writes))


def candidate_keys(spec: str | list[str], available: Iterable[Key], stage: str) -> list[Key]:
    """The texts a ranking stage orders, as its config names them: a prefix (`cand`: the
    captions `cand.0`, `cand.1`, … a `candidates` stage wrote) or a list of text names (captions
    of several stages, `alt_text`). A prefix nothing wrote is a config error naming what exists."""
    if isinstance(spec, list):
        return [text(name) for name in spec]
    found = numbered(spec, available)
    if not found:
        from capmill.errors import ConfigError

        captions = ", ".join(names(available, CAPTION)) or "none"
        raise ConfigError(f"{stage}: no captions {spec}.0, {spec}.1, … are written before this stage (a candidates "
                          f"stage with store_as: {spec} writes them); captions available: {captions}")
    return found
