"""Exact dense retrieval with a SentenceTransformer: cached corpus embeddings, FAISS flat inner product."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["dense_search"]


def dense_search(model: str, collection, queries: dict[str, str], top_k: int = 1000,
                 max_seq_length: int = 256) -> dict[str, dict[str, float]]:
    """Top-``top_k`` passages per query by cosine similarity (exact search); returns a run ``{qid: {did: score}}``.

    Corpus embeddings are computed once per (model revision, corpus) and cached (:mod:`retrieval_kd.encoders`).
    """
    from retrieval_kd.encoders import corpus_embeddings, query_embeddings
    from retrieval_kd.index.dense import build_faiss_index, search_index

    emb = np.asarray(corpus_embeddings(model, collection.corpus, max_seq_length))
    index, doc_ids = build_faiss_index("flat", emb), collection.corpus.ids
    q = query_embeddings(model, queries, max_seq_length)
    scores, rows = search_index(index, q, min(top_k, index.ntotal))
    return {qid: {doc_ids[int(r)]: float(s) for s, r in zip(scores[i], rows[i]) if r >= 0}
            for i, qid in enumerate(queries)}
