"""Evaluation: per-case, per-class metrics and the report of an evaluation run (metrics.json, metrics.csv)."""

from .metrics import METRICS, case_metrics, format_table, hd95, summarize
from .report import MetricsReport

__all__ = ["case_metrics", "format_table", "hd95", "METRICS", "MetricsReport", "summarize"]
