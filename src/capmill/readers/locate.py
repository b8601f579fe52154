"""Where a manifest's image locations may point, and the download of its URLs.

A jsonl line, a parquet cell or a dataset row names its image by a path or a URL, and every one
of them is untrusted. The rule:

- a relative path resolves inside the root: the manifest's folder (or URL prefix), or the
  input's `root`;
- an absolute path, a `file://` URL or another file system's URL (`s3://…`) is accepted only
  when it lies inside the root too;
- symbolic links are resolved before the check, so a link inside the root that points out of
  it is refused like the path it points to;
- `http(s)://` URLs are downloaded by the guarded fetcher (capmill.fetch), whatever the root;
- `allow_outside_root: true` turns the confinement off (the data and the manifest are yours).

A refused location becomes the sample's `read_error` with the reason; nothing is read.
"""

from __future__ import annotations

import os
import posixpath
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from pydantic import Field

from capmill.components import Strict
from capmill.errors import InputRefused, SampleError
from capmill.fetch import FetchConfig, fetch, is_url
from capmill.media.kinds import kind_of, sniff
from capmill.sample import IMAGE, ImageRef, Sample


class LocationConfig(Strict):
    """The keys every manifest input shares (mixed into jsonl, parquet and hf)."""

    # The folder (or URL prefix) image paths resolve in and must stay inside; default: the
    # folder of the file that names them.
    root: str | None = None
    # Read absolute paths, `..` escapes and links that point outside the root.
    allow_outside_root: bool = False
    # How http(s) image URLs are downloaded (timeouts, retries, size cap, address rules).
    fetch: FetchConfig = Field(default_factory=FetchConfig)


def _split(location: str) -> tuple[str | None, str]:
    """`s3://b/k` → ("s3", "b/k"); `file:///x` → (None, "/x"); a plain path → (None, path)."""
    if "://" not in location:
        return None, location
    protocol, rest = location.split("://", 1)
    protocol = protocol.lower()
    if protocol in ("file", "local"):
        return None, rest
    return protocol, rest


@dataclass(frozen=True, slots=True)
class Locator:
    """Resolves a manifest's locations against its root; see the module docstring."""

    root: str  # a local real path, or "protocol://prefix" without a trailing slash
    protocol: str | None  # None for a local root
    allow_outside: bool = False

    @classmethod
    def for_file(cls, manifest: str, config: LocationConfig) -> Locator:
        """The locator of a manifest at `manifest` (a path or URL)."""
        root = config.root if config.root is not None else posixpath.dirname(manifest.rstrip("/"))
        protocol, rest = _split(root)
        if protocol is None:
            return cls(os.path.realpath(rest or "."), None, config.allow_outside_root)
        return cls(f"{protocol}://{rest.rstrip('/')}", protocol, config.allow_outside_root)

    def locate(self, location: str) -> ImageRef:
        """A media reference (an image, or a video by its extension) for `location`, or
        InputRefused naming the rule it breaks."""
        ref = self._locate(location)
        ref.kind = kind_of(ref.ext) or IMAGE
        return ref

    def _locate(self, location: str) -> ImageRef:
        if "\0" in location:
            raise InputRefused("image location contains a NUL byte")
        ext = posixpath.splitext(location.split("?", 1)[0])[1].lstrip(".").lower() or None
        if is_url(location):
            return ImageRef(url=location, ext=ext)
        protocol, rest = _split(location)
        relative = protocol is None and not location.startswith(("/", "file://", "local://"))
        if self.protocol is None:
            if protocol is not None:
                if self.allow_outside:
                    return ImageRef(path=location, ext=ext)
                raise InputRefused(f"image location {location[:200]!r} is on another file system than the root "
                                   f"{self.root!r} (set input.root or allow_outside_root: true)")
            path = os.path.join(self.root, rest) if relative else rest
            real = os.path.realpath(path)
            if not self.allow_outside and os.path.commonpath([real, self.root]) != self.root:
                raise InputRefused(self._outside(location, real))
            return ImageRef(path=real if not self.allow_outside else path, ext=ext)
        # A remote root: resolve by name (remote file systems have no links to follow).
        if relative:
            joined = f"{self.root}/{rest}"
            if is_url(joined):  # a manifest served over http(s): its relative images are URLs
                return ImageRef(url=joined, ext=ext)
            protocol, rest = _split(joined)
        elif protocol is None:
            rest = "/" + rest.lstrip("/")
        target = f"{protocol}://{posixpath.normpath(rest)}" if protocol else posixpath.normpath(rest)
        if not self.allow_outside and not (protocol == self.protocol and (target + "/").startswith(self.root + "/")):
            raise InputRefused(self._outside(location, target))
        return ImageRef(path=target if not self.allow_outside else location, ext=ext)

    def _outside(self, location: str, resolved: str) -> str:
        shown = f" (resolves to {resolved[:200]!r})" if resolved != location else ""
        return (f"image path {location[:200]!r}{shown} is outside the input root {self.root!r}; "
                "set input.root or allow_outside_root: true to read it")


def confined(path: str, root_real: str) -> bool:
    """Whether `path`, links resolved, lies inside the (already real) folder `root_real`."""
    return os.path.commonpath([os.path.realpath(path), root_real]) == root_real


def refused_sample(key: str, reason: str, meta: dict) -> Sample:
    sample = Sample(key=key, meta=meta)
    sample.fail(InputRefused.status, reason)
    return sample


def with_downloads(samples: Iterator[Sample], config: FetchConfig) -> Iterator[Sample]:
    """`samples` in their order, each http(s) image downloaded first, `config.concurrency` at a
    time; a refused or failed download becomes the sample's read_error."""
    pool: ThreadPoolExecutor | None = None
    window: deque[tuple[Sample, Future | None]] = deque()
    try:
        for sample in samples:
            if sample.ok and sample.image.data is None and sample.image.url and is_url(sample.image.url):
                if pool is None:
                    pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="capmill-fetch")
                window.append((sample, pool.submit(_download, sample, config)))
            else:
                window.append((sample, None))
            while len(window) > 2 * config.concurrency or (window and (window[0][1] is None or window[0][1].done())):
                yield _settled(window.popleft())
        while window:
            yield _settled(window.popleft())
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(samples, "close", None)
        if close is not None:  # a reader stopped early (--limit, a fit sample) closes its file now
            close()


def _settled(item: tuple[Sample, Future | None]) -> Sample:
    sample, future = item
    if future is not None:
        future.result()
    return sample


def _download(sample: Sample, config: FetchConfig) -> None:
    try:
        sample.image.data = fetch(sample.image.url, config)
        kind, ext = sniff(sample.image.data)
        sample.image.ext = ext or sample.image.ext
        sample.image.kind = kind or sample.image.kind
    except SampleError as e:
        sample.fail(e.status, e.reason)
    except Exception as e:  # anything else the network stack raises stays this sample's problem
        sample.fail(InputRefused.status, f"download failed: {type(e).__name__}: {e}")
