"""capmill: recaption image-text data for training multimodal models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("capmill")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

from capmill.sample import Caption, ImageRef, Sample  # noqa: E402

__all__ = ["Caption", "ImageRef", "Sample", "__version__"]
