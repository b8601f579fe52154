"""Exception types. Callers catch by type, never by message."""


class CapmillError(Exception):
    """Base of every error capmill raises on purpose."""


class ConfigError(CapmillError):
    """The configuration is invalid; the message says what to change."""


class SetupError(CapmillError):
    """A component could not start (missing package, model, server); the message says what to do."""


class OutputConflictError(CapmillError):
    """The output directory holds results of a different run."""


class DuplicateKeyError(CapmillError):
    """Two samples share a key; the message names where both came from."""


class SampleError(CapmillError):
    """A problem with one sample; it becomes that sample's status and error, the run goes on."""

    status = "error"

    def __init__(self, reason: str, status: str | None = None):
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status


class MediaDecodeError(SampleError):
    """Media that cannot be decoded, or that breaks a hygiene limit; the reason says which."""

    status = "decode_error"


class ImageDecodeError(MediaDecodeError):
    status = "decode_error"


class VideoDecodeError(MediaDecodeError):
    status = "decode_error"


class AudioDecodeError(MediaDecodeError):
    status = "decode_error"


class NoAudioStream(AudioDecodeError):
    """The media has no sound at all (a silent video): for speech recognition, nothing to do
    rather than a failure."""


class BackendError(SampleError):
    status = "backend_error"


class InputRefused(SampleError):
    """An input location that capmill will not read: a manifest path outside its root, a URL to
    a private address, an over-size or non-image download, an opt-out header. The sample keeps
    its row with this reason."""

    status = "read_error"


class FetchFailed(SampleError):
    """A download that failed after its retries (server unreachable, timeouts, HTTP errors);
    the sample keeps its row with the reason."""

    status = "read_error"


class TransientBackendError(BackendError):
    """A backend failure that may go away when the sample is redone later (server down, timeout,
    rate limit after every retry, truncated answer, device out of memory)."""

    status = "transient_error"


class OutputAccessError(CapmillError):
    """The output directory cannot be written (read-only, no permission)."""


class OutputLockedError(OutputConflictError):
    """Another live run holds the output directory's lock."""


class CircuitOpenError(CapmillError):
    """Too many consecutive transient failures: the backend is down, the run stops."""


def is_transient_exception(error: BaseException) -> bool:
    """Exceptions that say the service or device failed, not the input: connections refused or
    dropped, timeouts, a GPU out of memory. Checked by type; torch only when already imported."""
    import sys

    if isinstance(error, (ConnectionError, TimeoutError, TransientBackendError)):
        return True
    torch = sys.modules.get("torch")
    if torch is not None:
        kinds = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch, "AcceleratorError", None)) if t)
        return bool(kinds) and isinstance(error, kinds)
    return False
