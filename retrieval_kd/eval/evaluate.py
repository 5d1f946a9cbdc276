"""Evaluation on ranx, with the conventions of BEIR and TREC Deep Learning.

* Relevance level: graded measures (nDCG) use every positive grade as gain, as trec_eval does; binary measures
  (MRR, MAP, Recall, Precision, hit rate, R-precision, bpref) count only grades >= ``relevance_level`` as
  relevant (TREC DL passage: 2). ranx expresses that with its ``-l<level>`` suffix; results keep plain names.
* Queries: only judged queries are evaluated, and a judged query missing from the run scores 0 (ranx
  ``make_comparable``), as ``trec_eval -c`` does.
* BEIR removes a query's own id from its results for ArguAna and Quora, whose queries are documents of the corpus:
  ``ignore_identical_ids`` (here never where the qrels judge that document relevant).
* Inputs are checked, never silently wrong: :func:`validate_metrics` refuses unknown metric names and bad cutoffs
  (:class:`~retrieval_kd.errors.ConfigError`); a NaN/inf score or a fractional grade is a
  :class:`~retrieval_kd.data.formats.DataFormatError`; :func:`check_run` refuses a run that shares no query with
  the qrels or no doc with the corpus (:class:`~retrieval_kd.errors.IntegrityError`), which would score 0.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from retrieval_kd.errors import ConfigError, IntegrityError

logger = logging.getLogger(__name__)

__all__ = ["EvaluationResult", "evaluate", "compare", "to_markdown", "DEFAULT_METRICS", "ranx_metric_name",
           "validate_metrics", "check_run"]

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100", "recall@1000", "map")
_BINARY = {"mrr", "map", "recall", "precision", "hit_rate", "hits", "r-precision", "bpref", "f1"}
#: the measures ranx computes (its ``metric_switch``); ``rbp`` takes a persistence (``rbp.95``), not a cutoff
_METRICS = ("ndcg", "ndcg_burges", "dcg", "dcg_burges", "mrr", "map", "recall", "precision", "f1", "hits",
            "hit_rate", "r-precision", "bpref", "rbp")
_NO_CUTOFF = {"r-precision", "bpref"}  # ranx ignores a cutoff for these: refused rather than silently dropped
_DIGITS = re.compile(r"[0-9]+")


def _metric_problem(metric: object) -> str | None:
    """Why ``metric`` is not a ranx measure ranx would compute as written, or None when it is."""
    if not isinstance(metric, str) or not metric:
        return f"metric {metric!r} is not a metric name"
    base, sep, level = metric.partition("-l")
    if sep and (not _DIGITS.fullmatch(level)):
        return f"metric {metric!r}: the relevance level after '-l' must be an integer >= 0"
    if base.startswith("rbp"):
        persistence = base[3:]
        if len(persistence) < 2 or persistence[0] not in ".@" or not _DIGITS.fullmatch(persistence[1:]):
            return f"metric {metric!r}: rbp needs a persistence, e.g. rbp.95 (p = 0.95)"
        return None
    name, at, cutoff = base.partition("@")
    if name not in _METRICS:
        close = difflib.get_close_matches(name.lower(), _METRICS, n=1)
        hint = f" (did you mean {close[0] + (at + cutoff if at else '')!r}?)" if close else ""
        return f"unknown metric {metric!r}{hint}"
    if at:
        if name in _NO_CUTOFF:
            return f"metric {metric!r}: {name} takes no cutoff (write {name})"
        if not _DIGITS.fullmatch(cutoff) or int(cutoff) < 1:
            return f"metric {metric!r}: the cutoff after '@' must be an integer >= 1, e.g. {name}@10"
    return None


def validate_metrics(metrics: Sequence[str] | str) -> list[str]:
    """The metric names, checked before any work: each must be a measure ranx computes, with a valid cutoff.

    Accepted: ``ndcg``, ``ndcg_burges``, ``dcg``, ``dcg_burges``, ``mrr``, ``map``, ``recall``, ``precision``,
    ``f1``, ``hits``, ``hit_rate`` (each optionally ``@k``, k >= 1), ``r-precision``, ``bpref`` (no cutoff),
    ``rbp.<persistence>`` (``rbp.95``); any of them may end in ``-l<level>`` (a relevance level for binary
    measures). A single string is one metric; repeated names are kept once.

    Raises:
        ConfigError: no metrics, or a bad one; the message names it and lists the accepted names.
    """
    if isinstance(metrics, str):
        metrics = [metrics]
    names = list(dict.fromkeys(metrics)) if metrics is not None else []
    if not names:
        raise ConfigError("no metrics asked for; name at least one, e.g. ndcg@10")
    for metric in names:
        problem = _metric_problem(metric)
        if problem:
            raise ConfigError(f"{problem}; accepted: {', '.join(_METRICS)}, with @k (k >= 1) for a cutoff "
                              "(ndcg@10, recall@1000), rbp.95 for rbp, and -l<level> to set a relevance level")
    return names


def check_run(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]] | None = None,
    corpus=None,
    source: str = "the run",
) -> int:
    """Check that a run belongs to the collection it is evaluated on, before it silently scores 0.

    Args:
        run: ``{qid: {doc_id: score}}``.
        qrels: the split's judgements: at least one run query must be judged.
        corpus: the collection's :class:`~retrieval_kd.data.Corpus` (or anything with a vectorised
            ``has(ids) -> bool array``): at least one run doc must be in it; missing ones are counted in a warning.
        source: how to name the run in messages (its file).

    Returns:
        How many distinct run doc ids are not in the corpus (0 without a corpus).

    Raises:
        IntegrityError: the run is empty, shares no query id with the qrels, or no doc id with the corpus.
    """
    if not any(run.values()):
        raise IntegrityError(f"{source}: the run holds no results")
    if qrels is not None:
        judged = {q for q, docs in qrels.items() if docs}
        if not judged.intersection(run):
            raise IntegrityError(
                f"{source}: none of its {len(run)} query ids is judged in the qrels (run: e.g. {min(run)!r}; "
                f"qrels: e.g. {min(judged) if judged else None!r}); evaluate it on the dataset and split it was "
                "retrieved for"
            )
    if corpus is None:
        return 0
    import numpy as np

    ids = sorted({d for docs in run.values() for d in docs})
    found = np.asarray(corpus.has(ids), dtype=bool)
    n_missing = len(ids) - int(found.sum())
    if n_missing == len(ids):
        raise IntegrityError(
            f"{source}: none of its {len(ids)} doc ids is in the corpus {getattr(corpus, 'path', corpus)} "
            f"(e.g. {ids[0]!r}); the run was retrieved from another corpus: evaluate it on the dataset it was made for"
        )
    if n_missing:
        example = ids[int(np.flatnonzero(~found)[0])]
        logger.warning("%s: %d of %d doc ids are not in the corpus %s (e.g. %r); they count as not relevant",
                       source, n_missing, len(ids), getattr(corpus, "path", corpus), example)
    return n_missing


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

    qrels_clean = {q: {d: _grade(q, d, r) for d, r in docs.items()} for q, docs in qrels.items() if docs}
    run_clean: dict[str, dict[str, float]] = {}
    removed = kept = 0
    for qid, docs in run.items():
        if qid not in qrels_clean:
            continue
        if ignore_identical_ids and qid in docs:
            if qrels_clean[qid].get(qid, 0) > 0:  # judged relevant: dropping it would lose a relevant document
                kept += 1
            else:
                docs = {d: s for d, s in docs.items() if d != qid}
                removed += 1
        if docs:
            scores = {d: float(s) for d, s in docs.items()}
            if not math.isfinite(sum(scores.values())):
                bad = next(((d, s) for d, s in scores.items() if not math.isfinite(s)), None)
                if bad is not None:
                    raise _format_error(f"run: query {qid!r}, doc {bad[0]!r} has score {bad[1]}; a run needs "
                                          "finite scores (a NaN or infinite score has no rank)")
            run_clean[qid] = scores
    if removed:
        logger.info("removed the query's own id from the results of %d queries (ignore_identical_ids)", removed)
    if kept:
        logger.warning("%d queries judge their own id relevant: it stays in their results (ignore_identical_ids "
                       "drops a query's own id only where it is not judged relevant)", kept)
    unjudged = len(set(run) - set(qrels_clean))
    if unjudged:
        logger.info("%d run queries have no judgements and are not evaluated", unjudged)
    missing = len(set(qrels_clean) - set(run_clean))
    if missing:
        logger.warning("%d judged queries have no results in the run; they score 0", missing)
    return Qrels.from_dict(qrels_clean), Run.from_dict(run_clean) if run_clean else None


def _format_error(message: str) -> Exception:
    from retrieval_kd.data.formats import DataFormatError  # imported late: ``import retrieval_kd.eval`` stays light

    return DataFormatError(message)


def _grade(qid: str, did: str, rel) -> int:
    from retrieval_kd.data.formats import integral_grade  # imported late: ``import retrieval_kd.eval`` stays light

    return integral_grade(rel, "qrels", qid, did)


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
        ignore_identical_ids: drop each query's own id from its results first (BEIR ArguAna, Quora), unless the
            qrels judge it relevant.

    Returns:
        Mean and per-query scores, keyed by the metric names as given.

    Raises:
        ConfigError: an unknown metric or a bad cutoff (:func:`validate_metrics`).
        DataFormatError: a NaN/inf score or a grade that is not an integer, naming the query and doc.
    """
    from ranx import evaluate as ranx_evaluate

    metrics = validate_metrics(metrics)
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

    metrics = validate_metrics(metrics)
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
