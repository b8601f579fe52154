"""Caption metrics and the `capmill eval` report."""

from capmill.eval.data import EvalSet, load_references, load_set
from capmill.eval.runner import EvalConfig, EvalResult, evaluate

__all__ = ["EvalConfig", "EvalResult", "EvalSet", "evaluate", "load_references", "load_set"]
