"""Candidate mining: the passages a teacher scores for each query.

Top-k from BM25 and/or a dense model, unioned, with the judged positives added (so every training query has
its positives among the scored candidates). Dense mining never holds a queries x corpus matrix: the corpus is
encoded in chunks, each chunk searched with an exact FAISS inner-product index, and the running top-k merged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["mine_bm25", "mine_dense", "merge_candidates", "add_positives", "mine_candidates"]

Run = dict[str, dict[str, float]]


def mine_bm25(collection, queries: Mapping[str, str], k: int = 100) -> Run:
    from retrieval_kd.search import bm25_index_for

    return bm25_index_for(collection).search(queries, top_k=k)


def _merge_topk(scores_a, ids_a, scores_b, ids_b, k):
    scores = np.concatenate([scores_a, scores_b], axis=1)
    ids = np.concatenate([ids_a, ids_b], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def dense_topk(query_emb: np.ndarray, doc_chunks, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k over a corpus given as an iterable of ``(row_offset, embeddings)`` chunks.

    Memory holds one chunk and the (queries x k) running results, never queries x corpus.
    """
    import faiss

    query_emb = np.ascontiguousarray(query_emb, dtype=np.float32)
    nq = query_emb.shape[0]
    best_s = np.full((nq, 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((nq, 0), dtype=np.int64)
    for offset, emb in doc_chunks:
        index = faiss.IndexFlatIP(query_emb.shape[1])
        index.add(np.ascontiguousarray(emb, dtype=np.float32))
        s, i = index.search(query_emb, min(k, emb.shape[0]))
        best_s, best_i = _merge_topk(best_s, best_i, s, i + offset, k)
    return best_s, best_i


def mine_dense(collection, queries: Mapping[str, str], model: str = "sentence-transformers/all-MiniLM-L6-v2",
               k: int = 100, chunk_size: int = 10_000, max_seq_length: int = 256, batch_size: int = 32) -> Run:
    """Top-k by a SentenceTransformer's cosine similarity; cached corpus embeddings searched chunk by chunk."""
    from retrieval_kd.encoders import corpus_embeddings, load_encoder

    encoder = load_encoder(model, max_seq_length)
    qids = list(queries)
    q = encoder.encode([queries[x] for x in qids], normalize_embeddings=True, batch_size=batch_size)
    doc_ids = collection.corpus.ids
    # cached on disk and memory-mapped: chunks are read one at a time
    emb = corpus_embeddings(model, collection.corpus, max_seq_length, True, batch_size, encoder=encoder)

    def chunks():
        for start in range(0, len(doc_ids), chunk_size):
            yield start, np.asarray(emb[start:start + chunk_size])

    scores, rows = dense_topk(q, chunks(), k)
    return {qid: {doc_ids[int(r)]: float(s) for s, r in zip(scores[i], rows[i]) if r >= 0} for i, qid in enumerate(qids)}


def merge_candidates(runs: Sequence[Run]) -> Run:
    """Union of several candidate lists; a doc's value is its best reciprocal rank (1/rank) over the lists."""
    out: Run = {}
    for run in runs:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))
            target = out.setdefault(qid, {})
            for rank, (did, _) in enumerate(ranked, start=1):
                target[did] = max(target.get(did, 0.0), 1.0 / rank)
    return out


def add_positives(run: Run, qrels: Mapping[str, Mapping[str, int]], min_grade: int = 1) -> tuple[Run, int]:
    """Add each query's judged positives missing from its candidates (value 0); returns the run and the count."""
    added = 0
    for qid, judged in qrels.items():
        if qid not in run:
            continue
        for did, grade in judged.items():
            if grade >= min_grade and did not in run[qid]:
                run[qid][did] = 0.0
                added += 1
    return run, added


def mine_candidates(collection, split: str, k: int = 100, sources: Sequence[str] = ("bm25",),
                    dense_model: str = "sentence-transformers/all-MiniLM-L6-v2", with_positives: bool = True,
                    min_grade: int | None = None) -> Run:
    """Candidates for the queries judged in ``split``: union of ``sources`` (``bm25``, ``dense``) + positives."""
    queries = collection.queries(split)
    runs = []
    for source in sources:
        if source == "bm25":
            runs.append(mine_bm25(collection, queries, k))
        elif source == "dense":
            runs.append(mine_dense(collection, queries, dense_model, k))
        else:
            raise ValueError(f"unknown candidate source {source!r}; use bm25 or dense")
    run = merge_candidates(runs) if len(runs) > 1 else runs[0]
    for qid in queries:
        run.setdefault(qid, {})
    if with_positives:
        level = min_grade if min_grade is not None else collection.conventions.relevance_level
        run, added = add_positives(run, collection.qrels(split), level)
        logger.info("candidates: added %d judged positives missing from the top-%d", added, k)
    return run
