"""Caption metrics and the `capmill eval` report."""

from capmill.eval.config import EvalConfig, EvalResult
from capmill.eval.data import EvalSet, load_references, load_set
from capmill.eval.runner import compare, evaluate

__all__ = ["EvalConfig", "EvalResult", "EvalSet", "compare", "evaluate", "load_references", "load_set"]
