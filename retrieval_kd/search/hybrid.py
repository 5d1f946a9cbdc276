"""Hybrid retrieval: several retrievers over one corpus, fused per query.

Each member is searched to ``depth`` documents per query; its list is normalised per query exactly as the ensemble
teacher normalises a teacher's scores (:func:`retrieval_kd.teachers.ensemble.normalize_scores`: ``minmax`` to
[0, 1], ``zscore`` to mean 0 / std 1, a constant list to zeros) and the lists are summed with ``weights`` (default
equal, summing to 1, as :class:`~retrieval_kd.teachers.EnsembleTeacher`). **A document missing from a member's list
counts as that list's minimum after normalisation** (0 under ``minmax``; the lowest z-score under ``zscore``): it
ranked below everything the member returned, and the least it can be is what the member's last document got. A
member that returned nothing for a query adds nothing to it.

``rrf`` is reciprocal-rank fusion instead (Cormack et al. 2009): a document at rank ``r`` (1-based, by the
member's score, ties by doc id) of a member's list adds ``weight / (rrf_k + r)``, a document missing from the list
adds nothing; weights default to 1 each, which is plain RRF.

Fused lists are ranked by score, ties by doc id.

References:
    Cormack, G. V., Clarke, C. L. A., Buettcher, S. (2009). Reciprocal Rank Fusion outperforms Condorcet and
    individual Rank Learning Methods. SIGIR.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from retrieval_kd.search.base import SearcherBase, check_k

__all__ = ["FUSIONS", "HybridRetriever", "fuse_runs"]

FUSIONS = ("minmax", "zscore", "rrf")
Run = Mapping[str, Mapping[str, float]]


def _check_weights(weights, n: int, normalization: str) -> list[float]:
    from retrieval_kd.errors import ConfigError

    if weights is None:
        return [1.0] * n if normalization == "rrf" else [1.0 / n] * n
    weights = list(weights)
    if len(weights) != n:
        raise ConfigError(f"{len(weights)} weights for {n} retrievers; give one weight per retriever")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"weight {w!r}: weights must be finite numbers >= 0")
    return [float(w) for w in weights]


def _member_scores(docs: Mapping[str, float], normalization: str, rrf_k: float) -> tuple[dict[str, float], float]:
    """One member's contribution per document of its list, and what a document missing from it gets."""
    from retrieval_kd.teachers.ensemble import normalize_scores

    if normalization == "rrf":
        order = sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))
        return {d: 1.0 / (rrf_k + rank) for rank, (d, _) in enumerate(order, start=1)}, 0.0
    values = normalize_scores(np.array(list(docs.values()), dtype=np.float64), normalization)
    return dict(zip(docs, values.tolist())), float(values.min())


def fuse_runs(runs: Sequence[Run], weights: Sequence[float] | None = None, normalization: str = "minmax",
              rrf_k: float = 60) -> dict[str, dict[str, float]]:
    """Fuse several runs of the same queries (the module docstring gives the rules); returns a run, best first."""
    from retrieval_kd.errors import ConfigError

    if not runs:
        raise ConfigError("fusion needs at least one run")
    if normalization not in FUSIONS:
        raise ConfigError(f"unknown normalization {normalization!r}; use one of {', '.join(FUSIONS)}")
    weights = _check_weights(weights, len(runs), normalization)
    out: dict[str, dict[str, float]] = {}
    for qid in dict.fromkeys(q for run in runs for q in run):
        lists = [run.get(qid) or {} for run in runs]
        docs = list(dict.fromkeys(d for docs in lists for d in docs))
        total = dict.fromkeys(docs, 0.0)
        for w, member in zip(weights, lists):
            if not member:
                continue
            scores, missing = _member_scores(member, normalization, rrf_k)
            for d in docs:
                total[d] += w * scores.get(d, missing)
        out[qid] = dict(sorted(total.items(), key=lambda kv: (-kv[1], kv[0])))
    return out


class HybridRetriever(SearcherBase):
    """Several retrievers over one corpus (e.g. BM25 or sparse + dense), fused per query.

    Args:
        retrievers: :class:`~retrieval_kd.search.Retriever` objects (or index folders, opened as such).
        weights: one per retriever (default: equal, summing to 1; 1 each under ``rrf``).
        normalization: ``minmax``, ``zscore`` (per-query score normalisation, as the ensemble teacher) or ``rrf``.
        depth: documents each retriever returns per query before fusion (at least ``k`` are asked for).
        rrf_k: the constant of reciprocal-rank fusion.
    """

    kind = "hybrid"

    def __init__(self, retrievers: Sequence, weights: Sequence[float] | None = None, normalization: str = "minmax",
                 depth: int = 100, rrf_k: float = 60):
        from retrieval_kd.errors import ConfigError
        from retrieval_kd.search.retriever import Retriever

        members = [r if isinstance(r, SearcherBase) else Retriever(r) for r in retrievers]
        if not members:
            raise ConfigError("a hybrid retriever needs at least one retriever")
        if normalization not in FUSIONS:
            raise ConfigError(f"unknown normalization {normalization!r}; use one of {', '.join(FUSIONS)}")
        if isinstance(rrf_k, bool) or not isinstance(rrf_k, (int, float)) or not math.isfinite(rrf_k) or rrf_k < 0:
            raise ConfigError(f"rrf_k={rrf_k!r}: must be a finite number >= 0")
        keys = {m.describe().get("corpus_key") for m in members} - {None}
        if len(keys) > 1:
            raise ConfigError("the retrievers were built on different corpora ("
                              + ", ".join(f"{m.name}: {m.describe().get('dataset')}" for m in members)
                              + "); fuse indexes of one corpus")
        self.retrievers = members
        self.weights = _check_weights(weights, len(members), normalization)
        self.normalization = normalization
        self.depth = check_k(depth, "depth")
        self.rrf_k = float(rrf_k)
        self.name = "+".join(m.name for m in members)

    def search_run(self, queries: Mapping[str, str], k: int = 1000) -> dict[str, dict[str, float]]:
        k = check_k(k)
        depth = max(self.depth, k)
        runs = [member.search_run(queries, depth) for member in self.retrievers]
        fused = fuse_runs(runs, self.weights, self.normalization, self.rrf_k)
        return {qid: dict(list(fused.get(qid, {}).items())[:k]) for qid in queries}

    def documents(self, doc_ids: Sequence[str]) -> list[dict]:
        return self.retrievers[0].documents(doc_ids)

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "normalization": self.normalization, "weights": self.weights,
                "depth": self.depth, "rrf_k": self.rrf_k, "members": [m.describe() for m in self.retrievers]}

