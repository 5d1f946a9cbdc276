"""BM25 teacher: scores candidates with the collection's bm25s index (built once under ``indexes/``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from retrieval_kd.teachers.base import Teacher

__all__ = ["BM25Teacher"]


class BM25Teacher(Teacher):
    kind = "bm25"

    def __init__(self, k1: float = 0.9, b: float = 0.4):
        from retrieval_kd.search.bm25 import BM25Params

        BM25Params(k1=k1, b=b)  # a bad k1 or b is a ConfigError naming it, before any index is built
        self.k1 = k1
        self.b = b
        self._index = None

    def config(self) -> dict[str, Any]:
        return {"k1": self.k1, "b": self.b, "stemmer": "english", "stopwords": "en", "library": "bm25s"}

    def prepare(self, collection) -> None:
        from retrieval_kd.search import BM25Params, bm25_index_for

        self._index = bm25_index_for(collection, params=BM25Params(k1=self.k1, b=self.b))

    def score(self, query: str, doc_ids: list[str], doc_texts: list[str]) -> np.ndarray:
        if self._index is None:
            raise RuntimeError("BM25Teacher needs prepare(collection) before scoring (it scores from the index)")
        return self._index.score(query, doc_ids)
