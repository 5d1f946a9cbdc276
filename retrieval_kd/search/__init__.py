"""Turning queries into ranked results: BM25 (bm25s), dense FAISS search, any index folder by text, hybrid fusion
and reranking with teachers. Index structures live in :mod:`retrieval_kd.index`; nothing here imports torch or
faiss until a search runs."""

from __future__ import annotations

from retrieval_kd.search.base import Hit
from retrieval_kd.search.bm25 import BM25Index, BM25Params, bm25_index_for
from retrieval_kd.search.dense import dense_search, hits_to_run
from retrieval_kd.search.hybrid import HybridRetriever, fuse_runs
from retrieval_kd.search.rerank import rerank, top_of_run
from retrieval_kd.search.retriever import Retriever

__all__ = ["BM25Index", "BM25Params", "Hit", "HybridRetriever", "Retriever", "bm25_index_for", "dense_search",
           "fuse_runs", "hits_to_run", "rerank", "top_of_run"]
