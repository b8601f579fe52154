"""capmill: recaption image-text data for training multimodal models.

The Python API (everything below is documented in the README's "Python" section):

    capmill.caption(images, formats=["ssc", "dsc"], backend={...})   captions for images in memory
    capmill.Pipeline.from_config(path_or_dict, **overrides)         .run() → RunSummary, .process(samples)
    capmill.evaluate(path, fields=[...])                            `capmill eval` → metrics dict

and, for plugin authors, the record types (`Sample`, `Caption`, `ImageRef`), the stage protocol
(`Stage`, `StageConfig`, `RunContext`, `Resources`) and the backend protocols
(`VisionLanguageModel`, `LanguageModel`, `ImageTextScorer`, `TextEmbedder`, `BackendConfig`).

`import capmill` loads only the record types; every other name is imported when first used, so
importing capmill never pulls in torch or a model library.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("capmill")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

from capmill.sample import Caption, ImageRef, Sample  # noqa: E402

# name → module that defines it, imported on first access (PEP 562).
_LAZY = {
    "caption": "capmill.api.caption",
    "Captions": "capmill.api.caption",
    "Pipeline": "capmill.api.pipeline",
    "evaluate": "capmill.api.evaluate",
    "RunConfig": "capmill.config",
    "RunSummary": "capmill.progress",
    "Stage": "capmill.stages.base",
    "RunContext": "capmill.stages.base",
    "StageConfig": "capmill.components",
    "BackendConfig": "capmill.components",
    "Resources": "capmill.components",
    "VisionLanguageModel": "capmill.backends.base",
    "LanguageModel": "capmill.backends.base",
    "ImageTextScorer": "capmill.backends.base",
    "TextEmbedder": "capmill.backends.base",
    "VLMRequest": "capmill.backends.base",
    "ChatRequest": "capmill.backends.base",
    "Generation": "capmill.backends.base",
    "GenerationParams": "capmill.backends.base",
    "CapmillError": "capmill.errors",
    "ConfigError": "capmill.errors",
    "SetupError": "capmill.errors",
    "SampleError": "capmill.errors",
}

__all__ = ["Caption", "ImageRef", "Sample", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'capmill' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
