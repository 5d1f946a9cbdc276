"""Corpus embeddings computed once per (model, settings, corpus) and cached on disk, resumably.

Encoding SciFact with all-MiniLM-L6-v2 takes minutes on two CPU cores, and the same vectors serve the
bi-encoder teacher, exact dense search, candidate mining and Distill-VQ. :func:`corpus_embeddings` encodes the
corpus in chunks of ``chunk_size`` passages, each saved as its own ``.npy`` part (written atomically); a killed
run resumes at the first missing part, and the finished matrix is one ``float32`` ``.npy`` file, memory-mapped
on load. Row ``i`` is the corpus's ``i``-th document (file order).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["corpus_embeddings", "embedding_cache_path", "load_encoder", "query_embeddings"]


def _save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary name in the same folder, then rename: a kill never leaves a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def load_encoder(model: str, max_seq_length: int | None = 256, device: str | None = None):
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(model, device=device)
    if max_seq_length:
        encoder.max_seq_length = max_seq_length
    return encoder


def embedding_cache_path(model: str, corpus, max_seq_length: int | None, normalize: bool) -> Path:
    from retrieval_kd.models.revision import model_revision
    from retrieval_kd.paths import cache_dir

    key = json.dumps({"model": model, "revision": model_revision(model), "max_seq_length": max_seq_length,
                      "normalize": normalize, "corpus": corpus.store_path.name}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model)[-60:]
    return cache_dir() / "embeddings" / f"{safe}-{digest}.npy"


def corpus_embeddings(model: str, corpus, max_seq_length: int | None = 256, normalize: bool = True,
                      batch_size: int = 32, chunk_size: int = 2048, encoder=None, path: Path | None = None) -> np.ndarray:
    """All passages' embeddings ``(len(corpus), dim)``; computed once, then read memory-mapped from the cache."""
    from retrieval_kd.utils.progress import progress

    path = path or embedding_cache_path(model, corpus, max_seq_length, normalize)
    if path.exists():
        return np.load(path, mmap_mode="r")
    parts_dir = path.with_suffix(".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    ids = corpus.ids
    starts = list(range(0, len(ids), chunk_size))
    for start in progress(starts, desc=f"encode corpus ({model})", unit="chunk"):
        part = parts_dir / f"{start:012d}.npy"
        if part.exists():
            continue
        encoder = encoder or load_encoder(model, max_seq_length)
        emb = encoder.encode(corpus.texts(ids[start:start + chunk_size]), batch_size=batch_size,
                             normalize_embeddings=normalize, convert_to_numpy=True).astype(np.float32)
        _save_npy(part, emb)
    matrix = np.concatenate([np.load(parts_dir / f"{s:012d}.npy") for s in starts]) if starts else np.zeros((0, 0))
    _save_npy(path, matrix.astype(np.float32))
    for part in parts_dir.glob("*.npy"):
        part.unlink()
    parts_dir.rmdir()
    logger.info("cached %s corpus embeddings %s at %s", model, matrix.shape, path)
    return np.load(path, mmap_mode="r")


def query_embeddings(model: str, queries: dict[str, str], max_seq_length: int | None = 256, normalize: bool = True,
                     batch_size: int = 64, encoder=None, prompt: str | None = None) -> np.ndarray:
    """Embeddings of queries (in the dict's order), cached on disk by model and query texts."""
    from retrieval_kd.models.revision import model_revision
    from retrieval_kd.paths import cache_dir

    key = json.dumps({"model": model, "revision": model_revision(model), "max_seq_length": max_seq_length,
                      "normalize": normalize, "prompt": prompt, "queries": list(queries.items())}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = cache_dir() / "embeddings" / f"queries-{digest}.npy"
    if path.exists():
        return np.load(path)
    encoder = encoder or load_encoder(model, max_seq_length)
    emb = encoder.encode(list(queries.values()), batch_size=batch_size, normalize_embeddings=normalize,
                         prompt=prompt, convert_to_numpy=True).astype(np.float32)
    _save_npy(path, emb)
    return emb
