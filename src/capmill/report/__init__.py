"""The static HTML report of a run output (`capmill report OUT`)."""

from capmill.report.build import build_report, collect

__all__ = ["build_report", "collect"]
