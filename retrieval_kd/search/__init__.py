"""First-stage retrieval: BM25 (bm25s) now; dense FAISS search and learned-sparse search join here."""

from __future__ import annotations

from retrieval_kd.search.bm25 import BM25Index, BM25Params, bm25_index_for

__all__ = ["BM25Index", "BM25Params", "bm25_index_for"]
