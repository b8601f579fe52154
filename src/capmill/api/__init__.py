"""The Python API: what `import capmill` offers (see `capmill/__init__.py`)."""

from capmill.api.caption import Captions, caption
from capmill.api.evaluate import evaluate
from capmill.api.pipeline import Pipeline, StagesConfig

__all__ = ["Captions", "Pipeline", "StagesConfig", "caption", "evaluate"]
