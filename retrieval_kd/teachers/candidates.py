"""Candidate mining: the passages a teacher scores for each query.

Top-k from BM25 and/or a dense model, unioned, with the judged positives added (so every training query has
its positives among the scored candidates). Dense mining never holds a queries x corpus matrix: the cached corpus
embeddings are read in chunks and searched exactly by FAISS (``faiss.contrib.exhaustive_search.knn_ground_truth``,
which keeps the running top-k in a result heap).
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


def mine_dense(collection, queries: Mapping[str, str], model: str = "sentence-transformers/all-MiniLM-L6-v2",
               k: int = 100, chunk_size: int = 10_000, max_seq_length: int = 256, batch_size: int = 32,
               encoding: str = "torch") -> Run:
    """Top-k by a SentenceTransformer's cosine similarity; cached corpus embeddings searched chunk by chunk.
    ``encoding``: the backend of both sides (:mod:`retrieval_kd.encoders.backends`)."""
    import faiss
    from faiss.contrib.exhaustive_search import knn_ground_truth

    from retrieval_kd.encoders import corpus_embeddings, load_encoder
    from retrieval_kd.search.dense import hits_to_run

    encoder = load_encoder(model, max_seq_length, encoding=encoding)
    qids = list(queries)
    q = encoder.encode([queries[x] for x in qids], normalize_embeddings=True, batch_size=batch_size)
    doc_ids = collection.corpus.ids
    # cached on disk and memory-mapped: chunks are read one at a time
    emb = corpus_embeddings(model, collection.corpus, max_seq_length, True, batch_size, encoder=encoder,
                            encoding=encoding)

    chunks = (np.ascontiguousarray(emb[start:start + chunk_size], dtype=np.float32)
              for start in range(0, len(doc_ids), chunk_size))
    # FAISS's own blockwise exact search (a result heap over the chunks); k <= corpus size, so the -1 ids FAISS
    # pads a small last chunk with never reach the top k
    scores, rows = knn_ground_truth(np.ascontiguousarray(q, dtype=np.float32), chunks, min(k, len(doc_ids)),
                                    metric_type=faiss.METRIC_INNER_PRODUCT, ngpu=0)
    return hits_to_run(scores, rows, doc_ids, qids)


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


def mine_candidates(collection, split: str | None, k: int = 100, sources: Sequence[str] = ("bm25",),
                    dense_model: str = "sentence-transformers/all-MiniLM-L6-v2", with_positives: bool = True,
                    min_grade: int | None = None, queries: Mapping[str, str] | None = None,
                    positives: Mapping[str, Mapping[str, int]] | None = None, encoding: str = "torch") -> Run:
    """Candidates for the queries judged in ``split``: union of ``sources`` (``bm25``, ``dense``) + positives.

    ``queries`` and ``positives`` (qrels-shaped; grade >= 1 counts) replace the split's queries and judgements:
    made-up queries (:mod:`retrieval_kd.queries`) and their source documents, GPL's positives.
    """
    queries = collection.queries(split) if queries is None else queries
    runs = []
    for source in sources:
        if source == "bm25":
            runs.append(mine_bm25(collection, queries, k))
        elif source == "dense":
            runs.append(mine_dense(collection, queries, dense_model, k, encoding=encoding))
        else:
            raise ValueError(f"unknown candidate source {source!r}; use bm25 or dense")
    run = merge_candidates(runs) if len(runs) > 1 else runs[0]
    for qid in queries:
        run.setdefault(qid, {})
    if with_positives:
        level = min_grade if min_grade is not None else 1 if positives is not None else \
            collection.conventions.relevance_level
        run, added = add_positives(run, collection.qrels(split) if positives is None else positives, level)
        logger.info("candidates: added %d judged positives missing from the top-%d", added, k)
    return run
