"""Evaluation with ranx under BEIR and TREC DL conventions."""

from __future__ import annotations

from retrieval_kd.eval.evaluate import DEFAULT_METRICS, EvaluationResult, compare, evaluate, to_markdown

__all__ = ["DEFAULT_METRICS", "EvaluationResult", "compare", "evaluate", "to_markdown"]
