"""Dense retrieval: FAISS hits as a run, and exact search with a SentenceTransformer over its cached embeddings."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["dense_search", "hits_to_run"]


def hits_to_run(scores: np.ndarray, rows: np.ndarray, doc_ids: Sequence[str],
                qids: Sequence[str]) -> dict[str, dict[str, float]]:
    """A run ``{qid: {doc_id: score}}``, best first, from FAISS's ``(scores, rows)`` of the queries ``qids``.

    Row ``i`` of both matrices belongs to ``qids[i]``; a FAISS id is a position in ``doc_ids``. The ``-1`` ids
    FAISS pads with (fewer hits than ``k``: an IVF index visiting too few lists) are left out.
    """
    if len(qids) != len(rows):
        raise ValueError(f"{len(rows)} result rows for {len(qids)} queries")
    return {qid: {doc_ids[int(r)]: float(s) for s, r in zip(scores[i], rows[i]) if r >= 0}
            for i, qid in enumerate(qids)}


def dense_search(model: str, collection, queries: dict[str, str], top_k: int = 1000,
                 max_seq_length: int = 256, encoding="torch") -> dict[str, dict[str, float]]:
    """Top-``top_k`` passages per query by cosine similarity (exact search); returns a run ``{qid: {did: score}}``.

    Corpus embeddings are computed once per (model revision, corpus, encoding) and cached
    (:mod:`retrieval_kd.encoders`); ``encoding`` is the backend of :mod:`retrieval_kd.encoders.backends`.
    """
    from retrieval_kd.encoders import corpus_embeddings, query_embeddings
    from retrieval_kd.index.dense import build_faiss_index, search_index

    emb = np.asarray(corpus_embeddings(model, collection.corpus, max_seq_length, encoding=encoding))
    index, doc_ids = build_faiss_index("flat", emb), collection.corpus.ids
    q = query_embeddings(model, queries, max_seq_length, encoding=encoding)
    scores, rows = search_index(index, q, min(top_k, index.ntotal))
    return hits_to_run(scores, rows, doc_ids, list(queries))
