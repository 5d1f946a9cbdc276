"""Heterogeneous teacher ensembles: per-query normalisation, weighting and scaling.

Geng et al. 2024 ("Towards Competitive Search Relevance For Inference-Free Learned Sparse Retrievers") distil
from an ensemble of dense and sparse teachers whose scores live on different scales: each teacher's scores
are normalised per query (min-max), combined with weights, and scaled to the range the student's loss expects.
z-score normalisation is offered as the alternative.

Equal weights are not always best (a weak member drags an equal-weight ensemble below its best member), so
:func:`fit_weights` searches the weight simplex on a grid for the best nDCG@10 on *labelled training or dev
queries*; it refuses nothing by itself, so never hand it the test split.

References:
    Geng, Z., Ru, D., Yang, Y. (2024). Towards Competitive Search Relevance For Inference-Free Learned Sparse
    Retrievers. arXiv:2411.04403.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from retrieval_kd.teachers.base import Teacher

logger = logging.getLogger(__name__)

__all__ = ["normalize_scores", "combine_runs", "fit_weights", "EnsembleTeacher", "NORMALIZATIONS"]

NORMALIZATIONS = ("minmax", "zscore", "none")
Run = Mapping[str, Mapping[str, float]]


def normalize_scores(scores: np.ndarray, method: str = "minmax") -> np.ndarray:
    """Normalise one query's scores: ``minmax`` to [0, 1], ``zscore`` to mean 0 / std 1, or ``none``.

    A constant score list maps to zeros (no information), not to a division by zero.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if method == "none" or scores.size == 0:
        return scores
    if method == "minmax":
        lo, hi = scores.min(), scores.max()
        return (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores)
    if method == "zscore":
        std = scores.std()
        return (scores - scores.mean()) / std if std > 0 else np.zeros_like(scores)
    raise ValueError(f"unknown normalization {method!r}; use one of {NORMALIZATIONS}")


def combine_runs(runs: Sequence[Run], weights: Sequence[float] | None = None, normalization: str = "minmax",
                 scale: float = 1.0) -> dict[str, dict[str, float]]:
    """Per-query normalised, weighted sum of several teachers' scores, times ``scale``.

    Only (query, doc) pairs that every member scored are combined; others are dropped with a count in the log.
    """
    if not runs:
        raise ValueError("an ensemble needs at least one member")
    weights = np.full(len(runs), 1.0 / len(runs)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(weights) != len(runs):
        raise ValueError(f"{len(weights)} weights for {len(runs)} members")
    return _weighted(_aligned(runs, normalization), weights, scale)


def _aligned(runs: Sequence[Run], normalization: str) -> dict[str, tuple[list[str], np.ndarray]]:
    """``{qid: (docs every member scored, [members, docs] normalised scores)}`` (what each weighting reuses)."""
    out, dropped = {}, 0
    for qid in runs[0]:
        if not all(qid in r for r in runs):
            dropped += len(runs[0][qid])
            continue
        docs = [d for d in runs[0][qid] if all(d in r[qid] for r in runs)]
        dropped += len(runs[0][qid]) - len(docs)
        out[qid] = docs, np.stack([normalize_scores(np.array([r[qid][d] for d in docs]), normalization)
                                   for r in runs]) if docs else np.zeros((len(runs), 0))
    if dropped:
        logger.warning("ensemble: %d (query, doc) pairs lacked a score from some member and were left out", dropped)
    return out


def _weighted(aligned: Mapping[str, tuple[list[str], np.ndarray]], weights: np.ndarray,
              scale: float = 1.0) -> dict[str, dict[str, float]]:
    out = {}
    for qid, (docs, scores) in aligned.items():
        total = np.zeros(len(docs))
        for w, member in zip(weights, scores):  # member by member, as the stored ensemble scores were summed
            total += w * member
        out[qid] = dict(zip(docs, (total * scale).tolist()))
    return out


#: metrics that read only a query's top k (``ndcg@10``, ``recall@100-l2``); others (``rbp@95``, ``map``) are not cut
_CUTOFF = re.compile(r"(?:ndcg|ndcg_burges|recall|precision|mrr|map|hits|hit_rate|f1)@(\d+)(?:-l\d+)?")


def _top(run: dict[str, dict[str, float]], k: int | None) -> dict[str, dict[str, float]]:
    """Each query's documents scored at least its k-th best (ties at the cut kept): a metric cut off at k reads no
    others, so it is unchanged up to ranx's order of tied scores, and ranx evaluates far fewer pairs (the weight
    grid evaluates one run per point)."""
    if k is None:
        return run
    out = {}
    for qid, scores in run.items():
        if len(scores) <= k:
            out[qid] = scores
            continue
        kth = np.partition(np.fromiter(scores.values(), dtype=np.float64), -k)[-k]
        out[qid] = {d: v for d, v in scores.items() if v >= kth}
    return out


def _simplex_grid(n: int, step: float) -> list[tuple[float, ...]]:
    ticks = int(round(1 / step))
    return [tuple(c / ticks for c in combo) for combo in itertools.product(range(ticks + 1), repeat=n)
            if sum(combo) == ticks]


def fit_weights(runs: Sequence[Run], qrels: Mapping[str, Mapping[str, int]], normalization: str = "minmax",
                step: float = 0.1, metric: str = "ndcg@10", relevance_level: int = 1) -> tuple[list[float], float]:
    """Grid search over the weight simplex for the best ``metric`` on labelled (train/dev) queries.

    Returns the weights and the metric they reach. Ties keep the most even weights (the grid's first best
    in order of distance from equal weights).
    """
    from retrieval_kd.eval import evaluate

    labelled = {q: r for q, r in qrels.items() if any(g >= relevance_level for g in r.values())}
    cut = _CUTOFF.fullmatch(metric)
    cutoff = int(cut.group(1)) if cut else None
    aligned = _aligned([{q: r[q] for q in labelled if q in r} for r in runs], normalization)  # normalised once
    equal = np.full(len(runs), 1.0 / len(runs))
    grid = sorted(_simplex_grid(len(runs), step), key=lambda w: float(np.abs(np.array(w) - equal).sum()))
    best, best_value = list(equal), -1.0
    for weights in grid:
        value = evaluate(labelled, _top(_weighted(aligned, np.asarray(weights)), cutoff), [metric],
                         relevance_level=relevance_level).scores[metric]
        if value > best_value + 1e-12:
            best, best_value = list(weights), value
    logger.info("fitted ensemble weights %s: %s %.4f on %d labelled queries", best, metric, best_value, len(labelled))
    return best, best_value


class EnsembleTeacher(Teacher):
    """An ensemble of teachers, normalised per query, weighted and scaled.

    Args:
        members: the teachers.
        weights: one per member (default equal).
        normalization: ``minmax`` (Geng et al. 2024) or ``zscore``.
        scale: multiplies the combined score (to match the range a student's loss expects).
    """

    kind = "ensemble"
    listwise = True  # per-query normalisation depends on the whole candidate list

    def __init__(self, members: Sequence[Teacher], weights: Sequence[float] | None = None,
                 normalization: str = "minmax", scale: float = 1.0):
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}; use one of {NORMALIZATIONS}")
        self.members = list(members)
        self.weights = list(weights) if weights is not None else [1.0 / len(self.members)] * len(self.members)
        if len(self.weights) != len(self.members):
            raise ValueError(f"{len(self.weights)} weights for {len(self.members)} members")
        self.normalization = normalization
        self.scale = scale

    def config(self) -> dict[str, Any]:
        return {"members": [m.fingerprint for m in self.members], "weights": [round(w, 6) for w in self.weights],
                "normalization": self.normalization, "scale": self.scale}

    @property
    def name(self) -> str:
        return "ensemble(" + "+".join(m.name for m in self.members) + ")"

    def prepare(self, collection) -> None:
        for member in self.members:
            member.prepare(collection)

    def score(self, query: str, doc_ids: list[str], doc_texts: list[str]) -> np.ndarray:
        total = np.zeros(len(doc_ids))
        for w, member in zip(self.weights, self.members):
            total += w * normalize_scores(member.score(query, doc_ids, doc_texts), self.normalization)
        return (total * self.scale).astype(np.float32)

    def combine(self, member_runs: Sequence[Run]) -> dict[str, dict[str, float]]:
        """The ensemble's scores from its members' stored scores (no model runs)."""
        return combine_runs(member_runs, self.weights, self.normalization, self.scale)
