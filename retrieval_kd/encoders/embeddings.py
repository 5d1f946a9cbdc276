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


def load_encoder(model: str, max_seq_length: int | None = 256, device: str | None = None, encoding="torch",
                 normalize: bool = True):
    """A SentenceTransformer (``encoding`` ``torch``), or a :class:`~retrieval_kd.encoders.runtime.GraphEncoder`
    running the model in another backend (:mod:`retrieval_kd.encoders.backends`; a folder written by
    ``rkd export-model`` always runs its own graph). ``normalize``: that graph's output is L2-normalised."""
    from retrieval_kd.encoders.backends import resolve_encoding

    resolved = resolve_encoding(encoding, "dense", model)
    if resolved.backend != "torch":
        from retrieval_kd.encoders.runtime import load_dense_encoder

        return load_dense_encoder(model, resolved, max_seq_length, normalize, device)
    from sentence_transformers import SentenceTransformer

    from retrieval_kd.models.resolve import resolve_model

    encoder = SentenceTransformer(resolve_model(model), device=device)
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


def embedding_cache_path(model: str, corpus, max_seq_length: int | None, normalize: bool, encoding="torch") -> Path:
    """The corpus cache file; a non-``torch`` encoding adds its backend and instruction-set target to the key."""
    from retrieval_kd.encoders.backends import resolve_encoding

    fields = {"max_seq_length": max_seq_length, "normalize": normalize, "corpus": corpus.store_path.name,
              **resolve_encoding(encoding, "dense", model, check=False).cache_fields()}
    return model_cache_file(model, "embeddings", fields, ".npy")


def corpus_embeddings(model: str, corpus, max_seq_length: int | None = 256, normalize: bool = True,
                      batch_size: int = 32, chunk_size: int = 2048, encoder=None, path: Path | None = None,
                      encoding="torch") -> np.ndarray:
    """All passages' embeddings ``(len(corpus), dim)``; computed once, then read memory-mapped from the cache.

    ``encoding`` (:mod:`retrieval_kd.encoders.backends`) is the backend that encodes; an ``encoder`` built by
    :func:`load_encoder` carries its own. A second process asking for the same file waits for the first.
    """
    from retrieval_kd.encoders.backends import encoding_of
    from retrieval_kd.utils.fs import file_lock

    resolved = encoding_of(encoder, encoding, "dense", model)
    path = path or embedding_cache_path(model, corpus, max_seq_length, normalize, resolved)
    if path.exists():
        return np.load(path, mmap_mode="r")
    ids = corpus.ids

    def encode(start: int, stop: int) -> np.ndarray:
        nonlocal encoder
        encoder = encoder or load_encoder(model, max_seq_length, encoding=resolved, normalize=normalize)
        return encoder.encode(corpus.texts(ids[start:stop]), batch_size=batch_size, normalize_embeddings=normalize,
                              convert_to_numpy=True).astype(np.float32)

    if encoder is None:  # a model that cannot be loaded here fails before its parts folder is made
        from retrieval_kd.models.resolve import resolve_model

        resolve_model(model)
    with file_lock(path, what="corpus embeddings", wait=True):
        if path.exists():  # written by another process while this one waited
            return np.load(path, mmap_mode="r")
        parts_dir = path.with_suffix(".parts")
        parts = encode_in_parts(len(ids), chunk_size, parts_dir, ".npy", encode, _save_npy, np.load,
                                f"encode corpus ({model})")
        matrix = np.concatenate(parts) if parts else np.zeros((0, 0))
        _save_npy(path, matrix.astype(np.float32))
        remove_parts(parts_dir)
    logger.info("cached %s corpus embeddings %s (encoding %s) at %s", model, matrix.shape, resolved.backend, path)
    return np.load(path, mmap_mode="r")


def query_embeddings(model: str, queries: dict[str, str], max_seq_length: int | None = 256, normalize: bool = True,
                     batch_size: int = 64, encoder=None, prompt: str | None = None, encoding="torch",
                     cache: bool = True) -> np.ndarray:
    """Embeddings of queries (in the dict's order), cached on disk by model, encoding and query texts.

    ``cache=False`` encodes them afresh and writes nothing (a server: each request's queries are new, and a file
    per request would only fill the disk)."""
    from retrieval_kd.encoders.backends import encoding_of
    from retrieval_kd.models.revision import model_cache_id, model_revision
    from retrieval_kd.paths import cache_dir
    from retrieval_kd.utils.fs import file_lock

    resolved = encoding_of(encoder, encoding, "dense", model)

    def encode() -> np.ndarray:
        model_ = encoder or load_encoder(model, max_seq_length, encoding=resolved, normalize=normalize)
        return model_.encode(list(queries.values()), batch_size=batch_size, normalize_embeddings=normalize,
                             prompt=prompt, convert_to_numpy=True).astype(np.float32)

    if not cache:
        return encode()
    key = json.dumps({"model": model_cache_id(model)[0], "revision": model_revision(model),
                      "max_seq_length": max_seq_length, "normalize": normalize, "prompt": prompt,
                      "queries": list(queries.items()), **resolved.cache_fields()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = cache_dir() / "embeddings" / f"queries-{digest}.npy"
    if path.exists():
        return np.load(path)
    with file_lock(path, what="query embeddings", wait=True):
        if path.exists():  # written by another process while this one waited
            return np.load(path)
        emb = encode()
        _save_npy(path, emb)
    return emb
