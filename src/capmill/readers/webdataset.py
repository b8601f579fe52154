"""Tar shards as img2dataset and OpenCLIP write them: `KEY.jpg` + `KEY.txt` and/or `KEY.json`.

A sample's media is its image member, or its video member (`KEY.mp4|webm|mkv|mov`) or audio
member (`KEY.wav|flac|mp3|ogg|m4a`) when it has one; a sample holding several keeps the video,
else the audio (an image beside either is then usually its thumbnail or cover art).
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterator
from typing import Any, Literal

from capmill import keys
from capmill.errors import ConfigError, DuplicateKeyError
from capmill.keys import Key
from capmill.media.kinds import AUDIO_EXTS, VIDEO_EXTS, kind_of
from capmill.readers.base import (
    IMAGE_EXTS,
    InputConfig,
    Reader,
    Shard,
    decode_text,
    expand_paths,
    shard_stem,
    unique_shard_names,
)
from capmill.sample import READ_ERROR, ImageRef, Sample

# Members we never interpret: pickles can run code when loaded.
NEVER_LOAD = ("pkl", "pickle", "pth", "pt", "npy")
# Samples of the first shard that `check` reads to see where the AltText is.
CHECK_SAMPLES = 1000


class WebDatasetInput(InputConfig):
    type: Literal["webdataset"] = "webdataset"
    # Local paths, globs, brace ranges ("shards/{00000..00099}.tar") or fsspec URLs (s3://, gs://, https://).
    path: str | list[str]
    # Where the AltText is: a member extension ("txt", "caption") or a key inside the
    # member KEY.json ("json:caption"); None when the shards have no AltText.
    alt_text: str | None = "txt"

    def provides(self) -> frozenset[Key]:
        fields = {keys.ALT_TEXT, keys.IMAGE, keys.VIDEO, keys.AUDIO}
        if self.alt_text is None:
            fields.discard(keys.ALT_TEXT)
        return frozenset(fields)

    def build(self) -> WebDatasetReader:
        return WebDatasetReader(self)


def split_member(name: str) -> tuple[str, str]:
    """`dir/abc.def.jpg` → (`dir/abc`, `def.jpg`): webdataset's rule, the key ends at the first dot of the basename."""
    dirname, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return (posixpath.join(dirname, stem) if dirname else stem), ext.lower()


def is_unsafe(name: str) -> bool:
    return name.startswith("/") or ".." in name.split("/")


def _not_a_file(info: tarfile.TarInfo) -> str:
    """Why a tar member that is not a regular file is refused (links are never followed)."""
    if info.issym():
        return f"a symbolic link to {info.linkname[:200]!r}; links are never followed"
    if info.islnk():
        return f"a hard link to {info.linkname[:200]!r}; links are never followed"
    return "not a regular file (device, fifo or other special member)"


class WebDatasetReader(Reader):
    config: WebDatasetInput

    def shards(self) -> list[Shard]:
        paths = expand_paths(self.config.path, self.config.storage_options)
        return unique_shard_names([Shard(shard_stem(p), p, i) for i, p in enumerate(paths)])

    def read_shard(self, shard: Shard) -> Iterator[Sample]:
        import fsspec

        with fsspec.open(shard.source, "rb", **self.config.storage_options) as f:
            # Stream mode: members are read in order without seeking, so remote shards work.
            with tarfile.open(fileobj=f, mode="r|*") as tar:
                yield from self._samples(self._groups(tar, shard), shard)

    def check(self) -> None:
        """Where the AltText is, against the first samples of the first non-empty shard: when
        none of them has it, the run would caption without any AltText, so this is a
        ConfigError listing the member extensions and KEY.json fields that are there."""
        source = self.config.alt_text
        if source is None:
            return
        for shard in self.shards():
            try:
                survey = self._survey(shard)
            except FileNotFoundError:
                continue  # a missing shard of a brace range: it fails by name when the run reaches it
            except Exception:
                return  # an unreadable shard fails with its own reason when the run reads it
            if survey is None:
                continue
            n, exts, fields, found = survey
            if found:
                return
            raise ConfigError(
                f"input.alt_text: {source!r} is in none of the first {n} samples of {shard.source} "
                f"(member extensions: {', '.join(sorted(exts)) or '(none)'}; KEY.json fields: "
                f"{', '.join(sorted(fields)) or '(no KEY.json)'}). Set input.alt_text to an extension "
                "(txt), to json:FIELD, or to null when the shards have no AltText")

    def _survey(self, shard: Shard) -> tuple[int, set[str], set[str], bool] | None:
        """(samples looked at, member extensions, KEY.json fields, AltText found) of the first
        samples of `shard`; None for a shard without samples."""
        import fsspec

        n, exts, fields = 0, set(), set()
        with fsspec.open(shard.source, "rb", **self.config.storage_options) as f:
            with tarfile.open(fileobj=f, mode="r|*") as tar:
                for key, members, _ in self._groups(tar, shard):
                    if key is None or not members:
                        continue
                    n += 1
                    exts.update(members)
                    meta: dict[str, Any] = {}
                    if "json" in members:
                        try:
                            meta["json"] = json.loads(members["json"])
                        except ValueError:
                            pass
                    if isinstance(meta.get("json"), dict):
                        fields.update(meta["json"])
                    if self._alt_text(members, meta) is not None:
                        return n, exts, fields, True
                    if n >= CHECK_SAMPLES:
                        break
        return (n, exts, fields, False) if n else None

    def _groups(self, tar: tarfile.TarFile, shard: Shard) -> Iterator[tuple[str | None, dict[str, bytes], list[tuple[str, str]]]]:
        """Yields (key, {ext: bytes}, [(member name, why refused)]) for each run of members
        sharing a key; refused members with no key of their own (unsafe names) come with key None."""
        seen: set[str] = set()
        key: str | None = None
        members: dict[str, bytes] = {}
        refused: list[tuple[str, str]] = []
        loose: list[tuple[str, str]] = []  # unsafe names: never grouped under a key, the name is the attack
        for info in tar:
            if info.isdir():
                continue
            if is_unsafe(info.name):
                loose.append((info.name, "absolute or parent-relative path"))
                continue
            k, ext = split_member(info.name)
            if k != key:
                if key is not None:
                    yield key, members, refused
                    refused = []
                if loose:
                    yield None, {}, loose
                    loose = []
                if k in seen:
                    raise DuplicateKeyError(f"key {k!r} appears twice in shard {shard.source} (members are not grouped)")
                seen.add(k)
                key, members = k, {}
            if not info.isfile():
                refused.append((info.name, _not_a_file(info)))
                continue
            fileobj = tar.extractfile(info)
            members[ext] = fileobj.read() if fileobj is not None else b""
        if key is not None:
            yield key, members, refused
        if loose:
            yield None, {}, loose

    def _samples(self, groups, shard: Shard) -> Iterator[Sample]:
        n_refused = 0
        for key, members, refused in groups:
            if key is None:
                # The member is never extracted; its row says why it is missing from the data. The
                # key names the shard so refusals in different shards never collide.
                for name, why in refused:
                    n_refused += 1
                    yield Sample(
                        key=f"refused_{shard.name}_{n_refused:05d}",
                        status=READ_ERROR,
                        error=f"tar member {name!r} refused: {why}",
                        meta={"member": name, "shard": shard.name},
                    )
                continue
            if not members:
                # Only links or special files under this key: keep its row, say why.
                names = ", ".join(f"{name!r} ({why})" for name, why in refused)
                yield Sample(key=key, status=READ_ERROR, error=f"no regular file for this key: {names} refused",
                             meta={"refused_members": [name for name, _ in refused]})
                continue
            sample = self._sample(key, members)
            if refused:
                sample.meta["refused_members"] = [name for name, _ in refused]
            yield sample

    def _sample(self, key: str, members: dict[str, bytes]) -> Sample:
        meta: dict[str, Any] = {}
        image = ImageRef()
        video = next((ext for ext in members if ext in VIDEO_EXTS), None)
        audio = next((ext for ext in members if ext in AUDIO_EXTS), None)
        chosen = video or audio or next((ext for ext in members if ext in IMAGE_EXTS), None)
        if chosen is not None:
            image = ImageRef(data=members[chosen], ext=chosen, kind=kind_of(chosen))
        if "json" in members:
            try:
                meta["json"] = json.loads(members["json"])
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                meta["json_error"] = str(e)
        alt_text = self._alt_text(members, meta)
        ignored = sorted(ext for ext in members if ext in NEVER_LOAD)
        if ignored:
            meta["ignored_members"] = ignored
        sample = Sample(key=key, image=image, alt_text=alt_text, meta=meta)
        for field in ("url", "width", "height"):
            if isinstance(meta.get("json"), dict) and field in meta["json"]:
                meta[field] = meta["json"][field]
        return sample

    def _alt_text(self, members: dict[str, bytes], meta: dict[str, Any]) -> str | None:
        source = self.config.alt_text
        if source is None:
            return None
        if source.startswith("json:"):
            value = meta.get("json", {}).get(source[5:]) if isinstance(meta.get("json"), dict) else None
            return None if value is None else str(value)
        raw = members.get(source)
        return None if raw is None else decode_text(raw, meta)
