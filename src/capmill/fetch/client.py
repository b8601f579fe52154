"""Download one image URL with the guards a downloader of untrusted URLs needs.

Each hop (the URL, then every redirect) is checked before any connection opens: the scheme is
http or https, the host's addresses are all public (or in `allow_networks`), and the connection
goes to one of those checked addresses, with the name kept for the Host header, SNI and the
certificate check. The response must not opt out (X-Robots-Tag), must have an image content
type, must fit the size cap (announced length first, then counted) and the time budget, and its
bytes must start like an image. Connection errors, timeouts, 429 and 5xx are retried with
backoff; every other failure is final. Refusals raise `InputRefused`, failures `FetchFailed`:
both become the sample's `read_error` with the reason.

Proxies from the environment are not used: a proxy would connect by name, out of reach of the
address check.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from urllib.parse import quote, urljoin, urlsplit

from capmill.errors import FetchFailed, InputRefused
from capmill.fetch.address import resolve
from capmill.fetch.config import FetchConfig

_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_BACKOFF = 30.0
# X-Robots-Tag directives that carry a value after a colon; a name before them is not an agent.
_VALUED = ("unavailable_after", "max-snippet", "max-image-preview", "max-video-preview")


class _Transient(Exception):
    """Worth another attempt: the connection failed, timed out, or the server said so."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def is_url(location: str) -> bool:
    return location[:8].lower().startswith(("http://", "https://"))


def fetch(url: str, config: FetchConfig | None = None) -> bytes:
    """The bytes of the image at `url`; InputRefused or FetchFailed with the reason."""
    config = config or FetchConfig()
    attempts = config.retries + 1
    for attempt in range(attempts):
        try:
            return _attempt(url, config)
        except _Transient as e:
            if attempt == attempts - 1:
                raise FetchFailed(f"{e.reason} ({attempts} attempt{'s' if attempts > 1 else ''})") from None
            wait = min(config.backoff * (2**attempt), _MAX_BACKOFF)
            if e.retry_after is not None:
                wait = min(max(wait, e.retry_after), _MAX_BACKOFF)
            time.sleep(wait)
    raise AssertionError("unreachable")


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to a checked address, whatever the name resolves to by now."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _target(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path?query) of an http(s) URL, or InputRefused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise InputRefused(f"malformed URL {url[:200]!r}: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InputRefused(f"URL scheme {scheme or '(none)'!r} refused; only http and https are fetched")
    host = parts.hostname
    if not host:
        raise InputRefused(f"URL {url[:200]!r} has no host")
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise InputRefused(f"URL host {host[:100]!r} is not a valid name") from None
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    return scheme, host, port or (443 if scheme == "https" else 80), path


def _attempt(url: str, config: FetchConfig) -> bytes:
    deadline = time.monotonic() + config.max_seconds
    allowed = tuple(config.allow_networks)
    for hop in range(config.max_redirects + 1):
        try:
            scheme, host, port, path = _target(url)
            addresses = resolve(host, port, allowed)  # refuses before any connection
        except InputRefused as e:
            if hop == 0:
                raise
            raise InputRefused(f"redirected to {_short(url)}: {e.reason}") from None
        conn = _connect(scheme, host, port, addresses, config, deadline)
        try:
            try:
                conn.request("GET", path, headers={
                    "User-Agent": config.user_agent,
                    "Accept": "image/*",
                    "Accept-Encoding": "identity",  # no compressed bodies: the size cap counts real bytes
                    "Connection": "close",
                })
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                raise _Transient(_describe(e, url)) from None
            if response.status in _REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise FetchFailed(f"HTTP {response.status} without a Location from {_short(url)}")
                url = urljoin(url, location.strip())
                continue
            if response.status == 429 or response.status >= 500:
                raise _Transient(f"HTTP {response.status} {response.reason} from {_short(url)}",
                                 _retry_after(response.getheader("Retry-After")))
            if response.status != 200:
                raise FetchFailed(f"HTTP {response.status} {response.reason} from {_short(url)}")
            _check_headers(response, url, config)
            return _body(conn, response, url, config, deadline)
        finally:
            conn.close()
    raise InputRefused(f"more than {config.max_redirects} redirects from {_short(url)}")


def _connect(scheme: str, host: str, port: int, addresses: list[str], config: FetchConfig, deadline: float):
    cls = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
    last: Exception | None = None
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        conn = cls(host, port, address, timeout=min(config.timeout, remaining))
        try:
            conn.connect()
            return conn
        except ssl.SSLCertVerificationError as e:
            conn.close()
            raise FetchFailed(f"TLS certificate of {host} refused: {e.verify_message}") from None
        except OSError as e:
            conn.close()
            last = e
    reason = _describe(last, f"{scheme}://{host}:{port}") if last else f"no time left to connect to {host}"
    raise _Transient(reason)


def _check_headers(response: http.client.HTTPResponse, url: str, config: FetchConfig) -> None:
    directive = opted_out(response.headers.get_all("X-Robots-Tag") or [], config)
    if directive:
        raise InputRefused(f"opted out by X-Robots-Tag: {directive} ({_short(url)})")
    ctype = (response.getheader("Content-Type") or "").split(";", 1)[0].strip().lower()
    if ctype and not any(ctype.startswith(prefix.lower()) for prefix in config.content_types):
        raise InputRefused(f"content type {ctype!r} is not an image, video or audio type ({_short(url)})")
    length = response.getheader("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > config.max_bytes:
        raise InputRefused(f"{int(length)} bytes announced, over fetch.max_bytes={config.max_bytes} ({_short(url)})")


def opted_out(values: list[str], config: FetchConfig) -> str | None:
    """The first opting-out directive in X-Robots-Tag header values, for our agent, or None.

    A value is `directive, directive` (for every agent) or `agent: directive, ...` (for one)."""
    if not config.opt_out:
        return None
    for value in values:
        agent, rest = None, value
        head, sep, tail = value.partition(":")
        if sep and "," not in head and head.strip().lower() not in _VALUED:
            agent, rest = head.strip().lower(), tail
        if agent is not None and agent not in (config.user_agent_token.lower(), "*"):
            continue
        for directive in rest.split(","):
            if directive.strip().lower() in config.opt_out:
                return directive.strip().lower()
    return None


def _body(conn, response: http.client.HTTPResponse, url: str, config: FetchConfig, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Transient(f"download took more than fetch.max_seconds={config.max_seconds} ({_short(url)})")
        if conn.sock is not None:
            conn.sock.settimeout(min(config.timeout, remaining))
        try:
            chunk = response.read1(65536)
        except (OSError, http.client.HTTPException) as e:
            raise _Transient(_describe(e, url)) from None
        if not chunk:
            break
        size += len(chunk)
        if size > config.max_bytes:
            raise InputRefused(f"more than fetch.max_bytes={config.max_bytes} bytes ({_short(url)})")
        chunks.append(chunk)
    data = b"".join(chunks)
    from capmill.media.kinds import sniff

    if sniff(data)[0] is None:
        start = data[:16].decode("ascii", "replace").strip()
        raise InputRefused(f"the body is not an image, video or audio file (starts with {start!r}) ({_short(url)})")
    return data


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _describe(error: Exception, url: str) -> str:
    if isinstance(error, (socket.timeout, TimeoutError)):
        return f"timed out ({_short(url)})"
    return f"{type(error).__name__}: {error} ({_short(url)})"


def _short(url: str) -> str:
    return url if len(url) <= 200 else url[:197] + "..."
