"""Sparse (SPLADE-style) document vectors of a corpus, computed once per (model, corpus) and cached as ``.npz``.

Encoding SciFact with SPLADE-tiny takes minutes on two CPU cores (the 30,522-way MLM head at every position is
the cost), and the same vectors serve index building, FLOPS statistics and every benchmark. Chunks are written as
they finish (SciPy ``save_npz``, no pickle), so a killed run resumes at the first missing chunk.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)

__all__ = ["load_sparse_encoder", "max_pool_rows", "siamese_splade", "sparse_corpus_vectors", "sparse_query_vectors",
           "sparse_rows", "to_scipy", "window_texts"]


def siamese_splade(model: str = "rkd-local/splade-tiny", max_seq_length: int = 256, device: str | None = None):
    """A siamese SPLADE SparseEncoder: the same MLM + max pooling of log(1 + ReLU(logits)) for queries and documents.

    sentence-transformers' ``relu`` activation is SPLADE's log(1 + ReLU(x)); its ``log1p_relu`` adds a second log
    (OpenSearch's variant).
    """
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sentence_transformer.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    from retrieval_kd.models.resolve import resolve_model

    model = resolve_model(model)
    return SparseEncoder(modules=[Transformer(model, max_seq_length=max_seq_length, transformer_task="fill-mask"),
                                  SpladePooling(pooling_strategy="max", activation_function="relu")], device=device)


def load_sparse_encoder(model: str, device: str | None = None, encoding="torch"):
    """A :class:`~sentence_transformers.SparseEncoder` from a folder or hub id; an MLM checkpoint without
    sentence-transformers files (the offline pack's ``rkd-local/splade-tiny``) becomes a siamese SPLADE.

    Another ``encoding`` than ``torch`` (:mod:`retrieval_kd.encoders.backends`) gives a
    :class:`~retrieval_kd.encoders.runtime.GraphEncoder` of the document side with SPLADE pooling fused; a folder
    written by ``rkd export-model`` always runs its own graph.
    """
    from retrieval_kd.encoders.backends import resolve_encoding

    resolved = resolve_encoding(encoding, "sparse", model)
    if resolved.backend != "torch":
        from retrieval_kd.encoders.runtime import load_sparse_encoder as load_graph_encoder

        return load_graph_encoder(model, resolved, device=device)
    from sentence_transformers import SparseEncoder

    from retrieval_kd.models.resolve import resolve_model

    path = Path(resolve_model(model))
    if (path / "modules.json").exists():
        return SparseEncoder(model, device=device)
    if not path.is_dir():  # a hub id: a cached sentence-transformers model, or a bare MLM checkpoint
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(model, "modules.json"), str):
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


def window_texts(tokenizer, texts: list[str], max_seq_length: int, max_windows: int) -> tuple[list[str], np.ndarray]:
    """Split each text into at most ``max_windows`` consecutive, non-overlapping windows that each fit
    ``max_seq_length`` tokens with the special tokens; returns the window texts and, per window, the index of the
    text it came from. A text that fits is its own single window, unchanged."""
    body = max_seq_length - tokenizer.num_special_tokens_to_add()
    if body < 1:
        raise ValueError(f"max_seq_length {max_seq_length} leaves no room for text next to the special tokens")
    windows, owners = [], []
    for i, ids in enumerate(tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]):
        n = max(1, min(max_windows, -(-len(ids) // body)))
        if n == 1:
            windows.append(texts[i])
        else:
            windows.extend(tokenizer.decode(ids[w * body:(w + 1) * body]) for w in range(n))
        owners.extend([i] * n)
    return windows, np.asarray(owners, dtype=np.int64)


def max_pool_rows(matrix: sp.spmatrix, owners: np.ndarray, n_rows: int) -> sp.csr_matrix:
    """Element-wise maximum of the rows that share an owner: row ``owners[i]`` of the result is the max over every
    row i it owns (non-negative SPLADE weights, so a missing entry counts as 0)."""
    coo = sp.coo_matrix(matrix)
    rows = owners[coo.row]
    order = np.lexsort((coo.col, rows))
    rows, cols, vals = rows[order], coo.col[order], coo.data[order]
    if len(vals) == 0:
        return sp.csr_matrix((n_rows, matrix.shape[1]), dtype=np.float32)
    start = np.flatnonzero(np.r_[True, (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])])
    pooled = np.maximum.reduceat(vals, start)
    return sp.csr_matrix((pooled.astype(np.float32), (rows[start], cols[start])), shape=(n_rows, matrix.shape[1]))


def _cache_path(model: str, corpus, max_seq_length: int | None, windows: int = 1, encoding="torch") -> Path:
    from retrieval_kd.encoders.backends import resolve_encoding
    from retrieval_kd.encoders.embeddings import model_cache_file

    fields = {"max_seq_length": max_seq_length, "corpus": corpus.store_path.name, "kind": "sparse-doc"}
    if windows > 1:  # keys of truncated encodings stay those of earlier releases
        fields["windows"] = windows
    fields.update(resolve_encoding(encoding, "sparse", model, check=False).cache_fields())  # torch: nothing
    return model_cache_file(model, "sparse", fields, ".npz")


def _save_npz(path: Path, matrix: sp.spmatrix) -> None:
    """``save_npz`` to a temporary name in the same folder, then rename (a kill never leaves a torn file)."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    sp.save_npz(tmp, matrix)
    os.replace(tmp, path)


def sparse_corpus_vectors(model: str, corpus, max_seq_length: int | None = 256, batch_size: int = 32,
                          chunk_size: int = 1024, encoder=None, windows: int = 1, encoding="torch") -> sp.csr_matrix:
    """Document vectors ``(len(corpus), vocab)`` (row i = the corpus's i-th document), cached on disk.

    ``windows`` > 1 encodes a document longer than ``max_seq_length`` tokens as up to that many consecutive
    windows and max-pools their vectors, which is SPLADE's own max pooling carried across windows (the
    "SPLADE-max over segments" aggregation of Nguyen et al. 2023, "Adapting Learned Sparse Retrieval for Long
    Documents"). ``windows=1`` truncates, as sentence-transformers does. ``encoding`` is the backend that
    encodes (an ``encoder`` from :func:`load_sparse_encoder` carries its own); it is part of the cache key.
    """
    from retrieval_kd.encoders.backends import encoding_of
    from retrieval_kd.encoders.embeddings import encode_in_parts, remove_parts
    from retrieval_kd.utils.fs import file_lock

    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    if windows > 1 and not max_seq_length:
        raise ValueError("windows > 1 needs a max_seq_length to cut documents at")
    resolved = encoding_of(encoder, encoding, "sparse", model)
    path = _cache_path(model, corpus, max_seq_length, windows, resolved)
    if path.exists():
        return sp.load_npz(path).tocsr()
    ids = corpus.ids

    def encode(start: int, stop: int) -> sp.csr_matrix:
        nonlocal encoder
        if encoder is None:
            encoder = load_sparse_encoder(model, encoding=resolved)
            if max_seq_length:
                encoder.max_seq_length = max_seq_length
        texts = corpus.texts(ids[start:stop])
        if windows == 1:
            return to_scipy(encoder.encode_document(texts, batch_size=batch_size, convert_to_sparse_tensor=True))
        pieces, owners = window_texts(encoder.tokenizer, texts, max_seq_length, windows)
        vectors = to_scipy(encoder.encode_document(pieces, batch_size=batch_size, convert_to_sparse_tensor=True))
        return max_pool_rows(vectors, owners, len(texts))

    if encoder is None:  # a model that cannot be loaded here fails before its parts folder is made
        from retrieval_kd.models.resolve import resolve_model

        resolve_model(model)
    with file_lock(path, what="sparse corpus vectors", wait=True):
        if path.exists():  # written by another process while this one waited
            return sp.load_npz(path).tocsr()
        parts_dir = path.with_suffix(".parts")
        parts = encode_in_parts(len(ids), chunk_size, parts_dir, ".npz", encode, _save_npz, sp.load_npz,
                                f"encode corpus (sparse, {model})")
        matrix = sp.vstack(parts).tocsr()
        _save_npz(path, matrix)
        remove_parts(parts_dir)
    logger.info("cached sparse corpus vectors %s (%.1f non-zeros per document, encoding %s) at %s", matrix.shape,
                matrix.nnz / max(matrix.shape[0], 1), resolved.backend, path)
    return matrix


def sparse_query_vectors(encoder, queries: dict[str, str], batch_size: int = 64) -> sp.csr_matrix:
    """Query vectors in the dict's order (the query route: static weights for inference-free models)."""
    return to_scipy(encoder.encode_query(list(queries.values()), batch_size=batch_size, convert_to_sparse_tensor=True))


def sparse_rows(matrix: sp.csr_matrix, keys) -> dict:
    """``{key: (token_ids, weights)}`` for the rows of a CSR matrix (row i belongs to the i-th key)."""
    matrix = sp.csr_matrix(matrix)
    return {key: (matrix.indices[matrix.indptr[i]:matrix.indptr[i + 1]],
                  matrix.data[matrix.indptr[i]:matrix.indptr[i + 1]]) for i, key in enumerate(keys)}
