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

__all__ = ["corpus_embeddings", "embedding_cache_path", "encode_in_parts", "load_encoder", "query_embeddings"]


def _save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary name in the same folder, then rename: a kill never leaves a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def encode_in_parts(n: int, chunk_size: int, parts_dir: Path, suffix: str, encode, save, load, desc: str) -> list:
    """Resumable chunked encoding, shared by dense and sparse corpus caches.

    Rows ``[start, start + chunk_size)`` are encoded by ``encode(start, stop)`` and written by ``save(path, part)``
    (atomically) to ``parts_dir/<start><suffix>``; a part already on disk is skipped, so a killed run resumes at
    the first missing one. Returns every part, in order, read with ``load``; the caller writes the whole matrix
    and then removes ``parts_dir``.
    """
    from retrieval_kd.utils.progress import progress

    parts_dir.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, n, chunk_size))
    for start in progress(starts, desc=desc, unit="chunk"):
        part = parts_dir / f"{start:012d}{suffix}"
        if not part.exists():
            save(part, encode(start, min(start + chunk_size, n)))
    return [load(parts_dir / f"{s:012d}{suffix}") for s in starts]


def remove_parts(parts_dir: Path) -> None:
    for part in parts_dir.iterdir():
        part.unlink()
    parts_dir.rmdir()


def load_encoder(model: str, max_seq_length: int | None = 256, device: str | None = None):
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(model, device=device)
    if max_seq_length:
        encoder.max_seq_length = max_seq_length
    return encoder


def model_cache_file(model: str, kind: str, fields: dict, suffix: str) -> Path:
    """The cache file of what ``model`` computed, under ``<cache>/<kind>/``: ``<label>-<digest><suffix>``.

    The digest (of the model's key and revision plus ``fields``) is the key; the label, the model's name, is for
    people. A file with the same digest under another label is returned, so a model folder that was moved or
    copied (same files, another name) finds what was cached under its old name.
    """
    from retrieval_kd.models.revision import model_cache_id, model_revision
    from retrieval_kd.paths import cache_dir

    model_key, label = model_cache_id(model)
    key = json.dumps({"model": model_key, "revision": model_revision(model), **fields}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = cache_dir() / kind
    existing = sorted(folder.glob(f"*-{digest}{suffix}")) if folder.is_dir() else []
    if existing:
        return existing[0]
    return folder / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)[-60:]}-{digest}{suffix}"


def embedding_cache_path(model: str, corpus, max_seq_length: int | None, normalize: bool) -> Path:
    return model_cache_file(model, "embeddings", {"max_seq_length": max_seq_length, "normalize": normalize,
                                                  "corpus": corpus.store_path.name}, ".npy")


def corpus_embeddings(model: str, corpus, max_seq_length: int | None = 256, normalize: bool = True,
                      batch_size: int = 32, chunk_size: int = 2048, encoder=None, path: Path | None = None) -> np.ndarray:
    """All passages' embeddings ``(len(corpus), dim)``; computed once, then read memory-mapped from the cache."""
    path = path or embedding_cache_path(model, corpus, max_seq_length, normalize)
    if path.exists():
        return np.load(path, mmap_mode="r")
    ids = corpus.ids

    def encode(start: int, stop: int) -> np.ndarray:
        nonlocal encoder
        encoder = encoder or load_encoder(model, max_seq_length)
        return encoder.encode(corpus.texts(ids[start:stop]), batch_size=batch_size, normalize_embeddings=normalize,
                              convert_to_numpy=True).astype(np.float32)

    parts_dir = path.with_suffix(".parts")
    parts = encode_in_parts(len(ids), chunk_size, parts_dir, ".npy", encode, _save_npy, np.load,
                            f"encode corpus ({model})")
    matrix = np.concatenate(parts) if parts else np.zeros((0, 0))
    _save_npy(path, matrix.astype(np.float32))
    remove_parts(parts_dir)
    logger.info("cached %s corpus embeddings %s at %s", model, matrix.shape, path)
    return np.load(path, mmap_mode="r")


def query_embeddings(model: str, queries: dict[str, str], max_seq_length: int | None = 256, normalize: bool = True,
                     batch_size: int = 64, encoder=None, prompt: str | None = None) -> np.ndarray:
    """Embeddings of queries (in the dict's order), cached on disk by model and query texts."""
    from retrieval_kd.models.revision import model_cache_id, model_revision
    from retrieval_kd.paths import cache_dir

    key = json.dumps({"model": model_cache_id(model)[0], "revision": model_revision(model),
                      "max_seq_length": max_seq_length, "normalize": normalize, "prompt": prompt,
                      "queries": list(queries.items())}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = cache_dir() / "embeddings" / f"queries-{digest}.npy"
    if path.exists():
        return np.load(path)
    encoder = encoder or load_encoder(model, max_seq_length)
    emb = encoder.encode(list(queries.values()), batch_size=batch_size, normalize_embeddings=normalize,
                         prompt=prompt, convert_to_numpy=True).astype(np.float32)
    _save_npy(path, emb)
    return emb
