"""Inverse document frequency of a tokenizer's vocabulary over a corpus: one streaming pass, saved as JSON.

The query side of an inference-free sparse retriever is the tokenizer plus one weight per vocabulary token,
initialised from IDF (Geng et al. 2024). IDF here is Lucene's BM25 form, which is never negative:

    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

with N the number of documents and df(t) the number of documents whose tokenisation contains t. A token never
seen in the corpus gets idf(df=0) = ln(1 + (N + 0.5) / 0.5). The JSON maps token strings to IDF (the format
sentence-transformers' ``SparseStaticEmbedding.from_json`` reads).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["bm25_idf", "compute_idf", "idf_vector", "load_idf", "save_idf"]


def bm25_idf(df: np.ndarray | float, n_docs: int):
    """Lucene BM25 IDF for document frequencies ``df`` among ``n_docs`` documents."""
    return np.log1p((n_docs - np.asarray(df, dtype=np.float64) + 0.5) / (np.asarray(df, dtype=np.float64) + 0.5))


def compute_idf(texts: Iterable[str], tokenizer, batch_size: int = 1000, max_length: int | None = 512) -> dict[str, float]:
    """IDF of every vocabulary token over ``texts`` (streamed in batches; memory is one count per token).

    Args:
        texts: the documents (an iterator is fine).
        tokenizer: a Hugging Face tokenizer; special tokens are not counted.
        batch_size: documents tokenised at once.
        max_length: truncation, as the document encoder truncates (None: whole documents).
    """
    from retrieval_kd.utils.progress import progress

    vocab = tokenizer.get_vocab()
    df = np.zeros(max(vocab.values()) + 1, dtype=np.int64)
    n_docs = 0
    batch: list[str] = []

    def flush():
        enc = tokenizer(batch, add_special_tokens=False, truncation=max_length is not None, max_length=max_length)
        for ids in enc["input_ids"]:
            df[np.unique(np.asarray(ids, dtype=np.int64))] += 1

    for text in progress(texts, desc="idf", unit="doc"):
        batch.append(text)
        n_docs += 1
        if len(batch) == batch_size:
            flush()
            batch = []
    if batch:
        flush()
    if n_docs == 0:
        raise ValueError("cannot compute IDF over an empty corpus")
    idf = bm25_idf(df, n_docs)
    logger.info("IDF over %d documents, %d tokens seen", n_docs, int((df > 0).sum()))
    return {token: float(idf[i]) for token, i in vocab.items()}


def idf_vector(idf: Mapping[str, float], tokenizer, n_docs_default: float | None = None) -> np.ndarray:
    """IDF as a vector indexed by token id; tokens missing from ``idf`` get the largest IDF in it."""
    vocab = tokenizer.get_vocab()
    fill = max(idf.values()) if n_docs_default is None else n_docs_default
    out = np.full(max(vocab.values()) + 1, fill, dtype=np.float32)
    for token, i in vocab.items():
        if token in idf:
            out[i] = idf[token]
    return out


def save_idf(idf: Mapping[str, float], path: str | os.PathLike) -> Path:
    """Write ``{token: idf}`` as JSON, atomically."""
    from retrieval_kd.data.formats import atomic_write

    with atomic_write(path) as fh:
        json.dump(dict(idf), fh, ensure_ascii=False)
    return Path(path)


def load_idf(path: str | os.PathLike) -> dict[str, float]:
    """Read ``{token: idf}``; every value must be a finite, non-negative number."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping tokens to IDF")
    for token, value in data.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{path}: token {token!r} has IDF {value!r}; expected a finite number >= 0")
    return {str(k): float(v) for k, v in data.items()}
