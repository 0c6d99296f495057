"""Evaluation: per-case, per-class metrics and the report of an evaluation run (metrics.json, metrics.csv), and the
answers to prompts of absent structures (absent_prompts.json)."""

from .absent import DEFAULT_THRESHOLDS_ML, AbsentPromptsReport, absent_prompt_names
from .metrics import CASE_VOLUMES, METRICS, case_metrics, format_table, hd95, summarize
from .report import MetricsReport

__all__ = [
    "absent_prompt_names",
    "AbsentPromptsReport",
    "case_metrics",
    "DEFAULT_THRESHOLDS_ML",
    "format_table",
    "hd95",
    "CASE_VOLUMES",
    "METRICS",
    "MetricsReport",
    "summarize",
]
