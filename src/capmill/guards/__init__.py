"""Checks on model-written text before it is stored: one output guard for every stage.

See `capmill.guards.guard` for how a stage uses it, `checks` for what is checked, and
`language` for the language heuristic.
"""

from capmill.guards.checks import CHECKS, GuardInput, instruction_signal
from capmill.guards.config import GuardConfig
from capmill.guards.guard import (
    DROPPED,
    FALLBACK,
    FLAGGED,
    PASSED,
    REGENERATED,
    REPAIRED,
    Guarded,
    OutputGuard,
    Verdict,
    finish_reason,
    settle,
)

__all__ = [
    "CHECKS", "DROPPED", "FALLBACK", "FLAGGED", "PASSED", "REGENERATED", "REPAIRED", "GuardConfig", "GuardInput",
    "Guarded", "OutputGuard", "Verdict", "finish_reason", "instruction_signal", "settle",
]
