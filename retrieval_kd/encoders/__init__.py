"""Encoders shared across stages: cached corpus embeddings of SentenceTransformer models."""

from __future__ import annotations

from retrieval_kd.encoders.embeddings import corpus_embeddings, embedding_cache_path, load_encoder, query_embeddings

__all__ = ["corpus_embeddings", "embedding_cache_path", "load_encoder", "query_embeddings"]
