"""Sparse (SPLADE-style) document vectors of a corpus, computed once per (model, corpus) and cached as ``.npz``.

Encoding SciFact with SPLADE-tiny takes minutes on two CPU cores (the 30,522-way MLM head at every position is
the cost), and the same vectors serve index building, FLOPS statistics and every benchmark. Chunks are written as
they finish (SciPy ``save_npz``, no pickle), so a killed run resumes at the first missing chunk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)

__all__ = ["load_sparse_encoder", "siamese_splade", "sparse_corpus_vectors", "sparse_query_vectors", "sparse_rows",
           "to_scipy"]


def siamese_splade(model: str = "rkd-local/splade-tiny", max_seq_length: int = 256, device: str | None = None):
    """A siamese SPLADE SparseEncoder: the same MLM + max pooling of log(1 + ReLU(logits)) for queries and documents.

    sentence-transformers' ``relu`` activation is SPLADE's log(1 + ReLU(x)); its ``log1p_relu`` adds a second log
    (OpenSearch's variant).
    """
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sentence_transformer.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    return SparseEncoder(modules=[Transformer(model, max_seq_length=max_seq_length, transformer_task="fill-mask"),
                                  SpladePooling(pooling_strategy="max", activation_function="relu")], device=device)


def load_sparse_encoder(model: str, device: str | None = None):
    """A :class:`~sentence_transformers.SparseEncoder` from a folder or hub id; an MLM checkpoint without
    sentence-transformers files (the offline pack's ``rkd-local/splade-tiny``) becomes a siamese SPLADE."""
    from sentence_transformers import SparseEncoder

    path = Path(model)
    if (path / "modules.json").exists():
        return SparseEncoder(model, device=device)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "modules.json")
    if isinstance(cached, str):
        return SparseEncoder(model, device=device)
    return siamese_splade(model, device=device)


def to_scipy(tensor) -> sp.csr_matrix:
    """A torch sparse (COO) or dense tensor as a float32 SciPy CSR matrix."""
    import torch

    if tensor.is_sparse:
        t = tensor.coalesce().cpu()
        idx = t.indices().numpy()
        return sp.csr_matrix((t.values().numpy().astype(np.float32), (idx[0], idx[1])), shape=tuple(t.shape))
    return sp.csr_matrix(torch.as_tensor(tensor).cpu().numpy().astype(np.float32))


def _cache_path(model: str, corpus, max_seq_length: int | None) -> Path:
    from retrieval_kd.models.revision import model_cache_id, model_revision
    from retrieval_kd.paths import cache_dir

    model_key, label = model_cache_id(model)
    key = json.dumps({"model": model_key, "revision": model_revision(model), "max_seq_length": max_seq_length,
                      "corpus": corpus.store_path.name, "kind": "sparse-doc"}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "sparse" / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)[-60:]}-{digest}.npz"


def _save_npz(path: Path, matrix: sp.spmatrix) -> None:
    """``save_npz`` to a temporary name in the same folder, then rename (a kill never leaves a torn file)."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    sp.save_npz(tmp, matrix)
    os.replace(tmp, path)


def sparse_corpus_vectors(model: str, corpus, max_seq_length: int | None = 256, batch_size: int = 32,
                          chunk_size: int = 1024, encoder=None) -> sp.csr_matrix:
    """Document vectors ``(len(corpus), vocab)`` (row i = the corpus's i-th document), cached on disk."""
    from retrieval_kd.encoders.embeddings import encode_in_parts, remove_parts

    path = _cache_path(model, corpus, max_seq_length)
    if path.exists():
        return sp.load_npz(path).tocsr()
    ids = corpus.ids

    def encode(start: int, stop: int) -> sp.csr_matrix:
        nonlocal encoder
        if encoder is None:
            encoder = load_sparse_encoder(model)
            if max_seq_length:
                encoder.max_seq_length = max_seq_length
        return to_scipy(encoder.encode_document(corpus.texts(ids[start:stop]), batch_size=batch_size,
                                                convert_to_sparse_tensor=True))

    parts_dir = path.with_suffix(".parts")
    parts = encode_in_parts(len(ids), chunk_size, parts_dir, ".npz", encode, _save_npz, sp.load_npz,
                            f"encode corpus (sparse, {model})")
    matrix = sp.vstack(parts).tocsr()
    _save_npz(path, matrix)
    remove_parts(parts_dir)
    logger.info("cached sparse corpus vectors %s (%.1f non-zeros per document) at %s", matrix.shape,
                matrix.nnz / max(matrix.shape[0], 1), path)
    return matrix


def sparse_query_vectors(encoder, queries: dict[str, str], batch_size: int = 64) -> sp.csr_matrix:
    """Query vectors in the dict's order (the query route: static weights for inference-free models)."""
    return to_scipy(encoder.encode_query(list(queries.values()), batch_size=batch_size, convert_to_sparse_tensor=True))


def sparse_rows(matrix: sp.csr_matrix, keys) -> dict:
    """``{key: (token_ids, weights)}`` for the rows of a CSR matrix (row i belongs to the i-th key)."""
    matrix = sp.csr_matrix(matrix)
    return {key: (matrix.indices[matrix.indptr[i]:matrix.indptr[i + 1]],
                  matrix.data[matrix.indptr[i]:matrix.indptr[i + 1]]) for i, key in enumerate(keys)}
