"""Topic-aware and balanced-margin batch sampling (TAS-Balanced) for sentence-transformers' trainer.

TAS-Balanced (Hofstaetter et al. 2021, "Efficiently Teaching an Effective Dense Retriever with Balanced Topic
Aware Sampling", SIGIR) composes each batch from the queries of one topic cluster (clusters of query embeddings,
computed once with k-means), and for each query draws its (positive, negative) pair uniformly over bins of the
teacher's margin, so that easy and hard pairs are seen alike.

The sampler plugs into :class:`~sentence_transformers.SentenceTransformerTrainer` through the training
argument ``batch_sampler`` (a callable returning a ``DefaultBatchSampler``), so the trainer, checkpoints,
resumption and DDP sharding stay the library's own. It yields row indices of a pair dataset with columns
``query_id``, ``score_positive`` and ``score_negative`` (see :mod:`retrieval_kd.students.data`).

Epochs are well defined: one epoch uses every training query exactly once (one pair per query), so an epoch
has ``sum(ceil(cluster size / batch_size))`` batches. Draws depend only on ``seed + epoch``, so every DDP rank
builds the same batches (accelerate hands each rank its share) and a resumed run replays the same epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial

import numpy as np
from sentence_transformers.base.sampler import DefaultBatchSampler

logger = logging.getLogger(__name__)

__all__ = ["TASBalancedBatchSampler", "cluster_queries", "margin_bins", "tas_sampler"]

SAMPLERS = ("random", "topic", "tas-balanced")


def cluster_queries(embeddings: np.ndarray, n_clusters: int, seed: int = 0, niter: int = 25) -> np.ndarray:
    """Cluster query embeddings with FAISS k-means (spherical for normalised vectors); returns a cluster per row.

    Args:
        embeddings: ``(n_queries, dim)`` float32.
        n_clusters: k; clamped to the number of queries.
        seed: k-means seed.
        niter: k-means iterations.
    """
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    k = max(1, min(int(n_clusters), len(x)))
    if k == 1:
        return np.zeros(len(x), dtype=np.int64)
    kmeans = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=10_000)
    kmeans.train(x)
    _, assign = kmeans.index.search(x, 1)
    return assign[:, 0].astype(np.int64)


def margin_bins(margins: np.ndarray, n_bins: int) -> list[np.ndarray]:
    """Positions of ``margins`` grouped into ``n_bins`` equal-width bins over their range; empty bins dropped."""
    margins = np.asarray(margins, dtype=np.float64)
    lo, hi = float(margins.min()), float(margins.max())
    if n_bins <= 1 or hi - lo <= 1e-12:
        return [np.arange(len(margins))]
    which = np.minimum(((margins - lo) / (hi - lo) * n_bins).astype(np.int64), n_bins - 1)
    return [np.flatnonzero(which == b) for b in range(n_bins) if np.any(which == b)]


class TASBalancedBatchSampler(DefaultBatchSampler):
    """Batches of queries from one topic cluster, each with a pair drawn uniformly over teacher-margin bins.

    Args:
        dataset: pair dataset with ``query_id``, ``score_positive`` and ``score_negative`` columns.
        batch_size: queries per batch.
        drop_last: accepted for the trainer's interface and ignored: a cluster's last, smaller batch is kept, so
            every query is used each epoch (sentence-transformers sets it under DDP against uneven last batches;
            here the batch count is instead rounded up to a multiple of the world size, see below).
        valid_label_columns: passed by the trainer; unused.
        generator: passed by the trainer; unused (draws come from ``seed + epoch``).
        seed: base seed.
        clusters: query id -> cluster id; None draws batches from all queries ("random" batches).
        balanced: draw each query's pair uniformly over its margin bins (True) or uniformly over its pairs.
        n_bins: margin bins per query (TAS-B uses 10).

    References:
        Hofstaetter, Lin, Yang, Lin, Hanbury. "Efficiently Teaching an Effective Dense Retriever with Balanced
        Topic Aware Sampling." SIGIR 2021. https://arxiv.org/abs/2104.06967
    """

    def __init__(self, dataset, batch_size: int, drop_last: bool = False, valid_label_columns=None, generator=None,
                 seed: int = 0, clusters: Mapping[str, int] | None = None, balanced: bool = True, n_bins: int = 10):
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last,
                         valid_label_columns=valid_label_columns, generator=generator, seed=seed)
        missing = [c for c in ("query_id", "score_positive", "score_negative") if c not in dataset.column_names]
        if missing:
            raise ValueError(f"TASBalancedBatchSampler needs the dataset columns {missing}; build the dataset with "
                             "retrieval_kd.students.data.pair_dataset (it keeps ids and teacher scores)")
        qids = np.asarray(dataset["query_id"])
        margins = np.asarray(dataset["score_positive"], dtype=np.float64) - np.asarray(dataset["score_negative"],
                                                                                         dtype=np.float64)
        order = np.argsort(qids, kind="stable")
        uniq, starts = np.unique(qids[order], return_index=True)
        bounds = list(starts[1:]) + [len(order)]
        self.query_ids: list[str] = [str(q) for q in uniq]
        self.rows: list[np.ndarray] = [order[s:e] for s, e in zip(starts, bounds)]
        self.bins: list[list[np.ndarray]] = [
            [rows[b] for b in margin_bins(margins[rows], n_bins if balanced else 1)] for rows in self.rows
        ]
        if clusters is None:
            self.groups = [np.arange(len(self.query_ids))]
        else:
            unknown = [q for q in self.query_ids if q not in clusters]
            if unknown:
                raise KeyError(f"{len(unknown)} training queries have no cluster (e.g. {unknown[0]!r}); cluster "
                               "the same queries the dataset holds")
            cid = np.asarray([clusters[q] for q in self.query_ids])
            self.groups = [np.flatnonzero(cid == c) for c in np.unique(cid)]
        self.balanced, self.n_bins, self.clustered = balanced, n_bins, clusters is not None
        # Batches vary in size (a cluster's last batch is smaller). ``batch_size = None`` tells accelerate's DDP
        # sharding (BatchSamplerShard) to hand out whole batches of any length instead of only full ones.
        self.queries_per_batch, self.batch_size = batch_size, None

    @staticmethod
    def _world_size() -> int:
        import torch.distributed as dist

        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def _batches_of_queries(self, rng: np.random.Generator) -> list[np.ndarray]:
        batches = []
        for group in self.groups:
            members = rng.permutation(group)
            batches += [members[s:s + self.queries_per_batch] for s in range(0, len(members), self.queries_per_batch)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        # under DDP every rank must take the same number of steps: repeat the first batches to fill the last round
        extra = -len(batches) % self._world_size()
        return batches + batches[:extra]

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        for batch in self._batches_of_queries(rng):
            rows = []
            for q in batch:
                bins = self.bins[q]
                chosen = bins[rng.integers(len(bins))]
                rows.append(int(chosen[rng.integers(len(chosen))]))
            yield rows

    def __len__(self) -> int:
        n = sum(-(-len(g) // self.queries_per_batch) for g in self.groups)
        return int(n + (-n % self._world_size()))


def tas_sampler(kind: str, clusters: Mapping[str, int] | None = None, n_bins: int = 10):
    """The ``batch_sampler`` training argument for a sampling scheme.

    Args:
        kind: ``random`` (queries shuffled over all clusters, pair uniform), ``topic`` (one cluster per batch,
            pair uniform) or ``tas-balanced`` (one cluster per batch, pair uniform over margin bins).
        clusters: query id -> cluster (needed by ``topic`` and ``tas-balanced``).
        n_bins: margin bins for ``tas-balanced``.
    """
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}; choose one of {', '.join(SAMPLERS)}")
    if kind != "random" and clusters is None:
        raise ValueError(f"sampler {kind!r} needs query clusters")
    return partial(TASBalancedBatchSampler, clusters=None if kind == "random" else dict(clusters),
                   balanced=kind == "tas-balanced", n_bins=n_bins)

