"""What every reader shares: the shard unit, path expansion and AltText decoding."""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from capmill import keys
from capmill.components import Strict
from capmill.errors import ConfigError
from capmill.keys import Key
from capmill.media.clips import ClipConfig
from capmill.media.kinds import IMAGE_EXTS, READABLE_EXTS, VIDEO_EXTS
from capmill.sample import AUDIO, READ_ERROR, VIDEO, Sample

__all__ = ["IMAGE_EXTS", "READABLE_EXTS", "VIDEO_EXTS"]


@dataclass(frozen=True, slots=True)
class Shard:
    """One unit of work: one input shard becomes one output shard of the same name."""

    name: str
    source: str  # where it is read from, for messages
    index: int
    spec: Any = field(default=None, compare=False)  # reader-specific detail (row-group range, file list)


class InputConfig(Strict):
    # `shard`: every key becomes "SHARD_KEY", which makes keys unique across shards when the
    # inputs reuse keys (e.g. several crawls numbered from 0). Off by default so keys stay the
    # ones the data came with.
    key_prefix: Literal["none", "shard"] = "none"
    # fsspec options for remote paths (credentials, endpoints): passed to fsspec.open.
    storage_options: dict[str, Any] = Field(default_factory=dict)
    # Cut every video and audio file into clips, each its own sample (`SOURCE_clipNNNN`, with
    # its window and source in `media.clip`); None keeps one sample per file. See capmill.media.clips.
    clips: ClipConfig | None = None

    def provides(self) -> frozenset[Key]:
        """The record fields every sample of this input carries (`capmill.chain` starts from
        them): the AltText and the image (or video) unless the config says the data has none."""
        return frozenset({keys.ALT_TEXT, keys.IMAGE, keys.VIDEO, keys.AUDIO})


class Reader(ABC):
    """Lists the shards of an input and yields each shard's Samples in a stable order.

    Samples come with their image undecoded (bytes or a location); decoding is the executor's
    job so it can run in a pool.
    """

    def __init__(self, config: InputConfig):
        self.config = config

    @abstractmethod
    def shards(self) -> list[Shard]: ...

    def check(self) -> None:
        """Check the configured columns or fields against the first file of the input, before a
        run claims its output: a missing one is a ConfigError listing those that exist. Readers
        whose layout has nothing to check keep this default."""

    @abstractmethod
    def read_shard(self, shard: Shard) -> Iterator[Sample]: ...

    def read(self, shard: Shard) -> Iterator[Sample]:
        """Samples of `shard`, with the configured key prefix applied; with `clips`, each video
        yields its clips in its place, and so does each audio file."""
        prefix = f"{shard.name}_" if self.config.key_prefix == "shard" else ""
        clips = self.config.clips
        for sample in self.read_shard(shard):
            if prefix:
                sample.key = prefix + sample.key
            check_key(sample)
            if clips is not None and sample.ok and sample.media.kind in (VIDEO, AUDIO):
                from capmill.media.clips import expand

                for clip in expand(sample, clips):
                    check_key(clip)
                    yield clip
            else:
                yield sample


def check_key(sample: Sample) -> None:
    """Keys become file names in the outputs: one that could escape the output folder or hide
    itself is replaced by a stable hash of it, and the sample is marked as a read error."""
    key = sample.key
    parts = key.split("/")
    if key and "\0" not in key and not key.startswith("/") and not any(p in ("", ".", "..") for p in parts) \
            and not parts[-1].startswith(".") and len(key) <= 200:
        return
    import hashlib

    sample.meta["original_key"] = key
    sample.key = "badkey_" + hashlib.sha1(key.encode("utf-8", "replace")).hexdigest()[:16]
    sample.fail(READ_ERROR, f"unsafe or empty key {key[:80]!r} replaced by {sample.key}")


_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """Expand numeric brace ranges as webdataset and img2dataset write them: `{00000..00099}`.

    The width of the first bound is kept, so `{000..010}` gives `000`, `001`, … `010`.
    """
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    lo, hi = match.group(1), match.group(2)
    width = len(lo)
    out = []
    for i in range(int(lo), int(hi) + 1):
        out.extend(expand_braces(pattern[: match.start()] + str(i).zfill(width) + pattern[match.end() :]))
    return out


def expand_paths(paths: str | list[str], storage_options: dict[str, Any] | None = None) -> list[str]:
    """Brace ranges and globs → a sorted, de-duplicated list of paths or URLs.

    A glob that matches nothing, or a named file that does not exist, is a ConfigError. A brace
    range's files are kept even when some are missing, so a missing shard is reported by name
    (and its shard fails) instead of silently shrinking the dataset; a range none of whose files
    exists is a ConfigError.
    """
    import fsspec

    options = storage_options or {}
    result: list[str] = []
    for pattern in [paths] if isinstance(paths, str) else paths:
        expanded = expand_braces(pattern)
        named: list[str] = []
        for p in expanded:
            if any(ch in p for ch in "*?["):
                fs, _, _ = fsspec.get_fs_token_paths(p, storage_options=options)
                matches = sorted(fs.glob(p))
                if not matches:
                    raise ConfigError(f"input path {p!r} matches no file")
                protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
                result.extend(m if protocol in ("file", "local") else f"{protocol}://{m}" for m in matches)
            else:
                named.append(p)
                result.append(p)
        if named and not any(_exists(p, options) for p in named):
            if len(expanded) > 1:
                raise ConfigError(f"input path {pattern!r}: none of its {len(expanded)} files exists "
                                  f"(the first is {named[0]!r})")
            raise ConfigError(f"input file {named[0]!r} does not exist")
    seen: set[str] = set()
    unique = [p for p in result if not (p in seen or seen.add(p))]
    return unique


def _exists(path: str, storage_options: dict[str, Any]) -> bool:
    from fsspec.core import url_to_fs

    try:
        fs, inner = url_to_fs(path, **storage_options)
        return bool(fs.exists(inner))
    except FileNotFoundError:
        return False
    except Exception:  # unreachable or unauthorised: not known to be missing; reading it will say why
        return True


def shard_stem(path: str) -> str:
    """`data/00012.tar` → `00012`; the output shard keeps the input's name."""
    name = os.path.basename(path.rstrip("/"))
    for suffix in (".tar.gz", ".tgz", ".tar", ".parquet", ".jsonl", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def unique_shard_names(shards: list[Shard]) -> list[Shard]:
    names: dict[str, str] = {}
    for shard in shards:
        if shard.name in names:
            raise ConfigError(
                f"two input shards map to the same output name {shard.name!r}: "
                f"{names[shard.name]} and {shard.source}; rename one of them"
            )
        names[shard.name] = shard.source
    return shards


def decode_text(raw: bytes, sample_meta: dict[str, Any]) -> str:
    """AltText bytes → str. Invalid UTF-8 is replaced, not fatal, and flagged in the meta."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        sample_meta["alt_text_invalid_utf8"] = True
        return raw.decode("utf-8", errors="replace")
