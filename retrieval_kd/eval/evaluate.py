"""Evaluation on ranx, with the conventions of BEIR and TREC Deep Learning.

* Relevance level: graded measures (nDCG) use every positive grade as gain, as trec_eval does; binary measures
  (MRR, MAP, Recall, Precision, hit rate, R-precision, bpref) count only grades >= ``relevance_level`` as
  relevant (TREC DL passage: 2). ranx expresses that with its ``-l<level>`` suffix; results keep plain names.
* Queries: only judged queries are evaluated, and a judged query missing from the run scores 0 (ranx
  ``make_comparable``), as ``trec_eval -c`` does.
* BEIR removes a query's own id from its results for ArguAna and Quora: ``ignore_identical_ids``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

__all__ = ["EvaluationResult", "evaluate", "compare", "to_markdown", "DEFAULT_METRICS", "ranx_metric_name"]

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100", "recall@1000", "map")
_BINARY = {"mrr", "map", "recall", "precision", "hit_rate", "hits", "r-precision", "bpref", "f1"}


@contextlib.contextmanager
def _quiet_numba():
    """ranx's kernels raise a harmless NumbaTypeSafetyWarning (uint64 -> int64 index cast) on every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unsafe cast from uint64 to int64.*")
        yield


def ranx_metric_name(metric: str, relevance_level: int) -> str:
    """The ranx name that applies ``relevance_level`` to a binary measure (``recall@100`` -> ``recall@100-l2``)."""
    if "-l" in metric or relevance_level <= 1:
        return metric
    base = re.split(r"@", metric)[0]
    return f"{metric}-l{relevance_level}" if base in _BINARY else metric


@dataclass
class EvaluationResult:
    """Mean scores over the judged queries, and the per-query scores behind them."""

    scores: dict[str, float]
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)
    n_queries: int = 0

    def to_json(self, per_query: bool = False) -> str:
        out: dict = dict(self.scores)
        if per_query:
            out = {"mean": self.scores, "per_query": self.per_query, "n_queries": self.n_queries}
        return json.dumps(out, indent=1, sort_keys=False)


def _prepare(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    ignore_identical_ids: bool,
):
    from ranx import Qrels, Run

    qrels_clean = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items() if docs}
    run_clean: dict[str, dict[str, float]] = {}
    removed = 0
    for qid, docs in run.items():
        if qid not in qrels_clean:
            continue
        if ignore_identical_ids and qid in docs:
            docs = {d: s for d, s in docs.items() if d != qid}
            removed += 1
        if docs:
            run_clean[qid] = {d: float(s) for d, s in docs.items()}
    if removed:
        logger.info("removed the query's own id from the results of %d queries (ignore_identical_ids)", removed)
    unjudged = len(set(run) - set(qrels_clean))
    if unjudged:
        logger.info("%d run queries have no judgements and are not evaluated", unjudged)
    missing = len(set(qrels_clean) - set(run_clean))
    if missing:
        logger.warning("%d judged queries have no results in the run; they score 0", missing)
    return Qrels.from_dict(qrels_clean), Run.from_dict(run_clean) if run_clean else None


def evaluate(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    relevance_level: int = 1,
    ignore_identical_ids: bool = False,
) -> EvaluationResult:
    """Evaluate a run against qrels with ranx.

    Args:
        qrels: ``{qid: {doc_id: grade}}``.
        run: ``{qid: {doc_id: score}}``.
        metrics: ranx metric names (``ndcg@10``, ``mrr@10``, ``recall@1000``, ``map``, ``precision@10`` ...).
        relevance_level: minimum grade binary measures count as relevant.
        ignore_identical_ids: drop each query's own id from its results first (BEIR ArguAna, Quora).

    Returns:
        Mean and per-query scores, keyed by the metric names as given.
    """
    from ranx import evaluate as ranx_evaluate

    metrics = list(metrics)
    if not metrics:
        raise ValueError("no metrics asked for")
    ranx_qrels, ranx_run = _prepare(qrels, run, ignore_identical_ids)
    n = len(ranx_qrels.keys())
    if ranx_run is None:
        logger.warning("the run has no results for any judged query: every metric is 0")
        return EvaluationResult({m: 0.0 for m in metrics}, {m: {q: 0.0 for q in ranx_qrels.keys()} for m in metrics}, n)
    names = {m: ranx_metric_name(m, relevance_level) for m in metrics}
    with _quiet_numba():
        ranx_evaluate(ranx_qrels, ranx_run, list(names.values()), make_comparable=True, save_results_in_run=True)
    means = {m: float(ranx_run.mean_scores[names[m]]) for m in metrics}
    per_query = {m: {q: float(v) for q, v in ranx_run.scores[names[m]].items()} for m in metrics}
    return EvaluationResult(means, per_query, n)


def compare(
    qrels: Mapping[str, Mapping[str, int]],
    runs: Mapping[str, Mapping[str, Mapping[str, float]]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    relevance_level: int = 1,
    stat_test: str = "student",
    max_p: float = 0.05,
    ignore_identical_ids: bool = False,
):
    """Paired significance tests between runs (``ranx.compare``); returns ranx's Report.

    The report's ``to_dict()`` holds means and p-values; the first run is the usual baseline.
    """
    from ranx import compare as ranx_compare

    ranx_runs = []
    ranx_qrels = None
    for name, run in runs.items():
        ranx_qrels, ranx_run = _prepare(qrels, run, ignore_identical_ids)
        if ranx_run is None:
            raise ValueError(f"run {name!r} has no results for any judged query")
        ranx_run.name = name
        ranx_runs.append(ranx_run)
    names = [ranx_metric_name(m, relevance_level) for m in metrics]
    with _quiet_numba():
        return ranx_compare(ranx_qrels, ranx_runs, names, stat_test=stat_test, max_p=max_p, make_comparable=True)


def to_markdown(rows: Mapping[str, Mapping[str, float]], metrics: Sequence[str] | None = None, digits: int = 4) -> str:
    """A markdown table: one row per system, one column per metric."""
    if not rows:
        return ""
    metrics = list(metrics or next(iter(rows.values())).keys())
    header = "| system | " + " | ".join(metrics) + " |"
    sep = "|---|" + "---:|" * len(metrics)
    lines = [header, sep]
    for name, scores in rows.items():
        cells = [f"{scores[m]:.{digits}f}" if m in scores else "" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
