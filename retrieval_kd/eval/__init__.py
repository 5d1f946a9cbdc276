"""Evaluation with ranx under BEIR and TREC DL conventions."""

from __future__ import annotations

from retrieval_kd.eval.evaluate import (
    DEFAULT_METRICS,
    EvaluationResult,
    check_run,
    compare,
    evaluate,
    to_markdown,
    validate_metrics,
)

__all__ = ["DEFAULT_METRICS", "EvaluationResult", "check_run", "compare", "evaluate", "to_markdown",
           "validate_metrics"]
