"""SPLADE teacher: MLM logits, log(1 + ReLU) activation, max pooling over tokens; dot product of sparse vectors.

Built from sentence-transformers' modules (``Transformer`` for fill-mask + ``SpladePooling``), the same pieces as a
:class:`~sentence_transformers.SparseEncoder` (Formal et al. 2021, "SPLADE v2: Sparse Lexical and Expansion
Model for Information Retrieval"). The offline pack's ``rkd-local/splade-tiny`` is the default here; real use
names e.g. ``naver/splade-cocondenser-ensembledistil``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retrieval_kd.encoders.backends import resolve_encoding
from retrieval_kd.models.revision import model_revision
from retrieval_kd.teachers.base import Teacher

__all__ = ["SpladeTeacher"]


class SpladeTeacher(Teacher):
    kind = "splade"

    def __init__(self, model: str = "rkd-local/splade-tiny", max_seq_length: int = 256, batch_size: int = 32,
                 device: str | None = None, encoding: str = "torch"):
        self.model_name = model
        self.encoding = encoding  # retrieval_kd.encoders.backends; part of the fingerprint unless torch
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.device = device
        self._model = None
        self._doc_cache: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        return {"model": self.model_name, "revision": model_revision(self.model_name),
                "max_seq_length": self.max_seq_length, "pooling": "max", "activation": "log(1+relu)",
                **resolve_encoding(self.encoding, "sparse", self.model_name, check=False).cache_fields()}

    @property
    def model(self):
        if self._model is None and resolve_encoding(self.encoding, "sparse", self.model_name).backend != "torch":
            from retrieval_kd.encoders.sparse import load_sparse_encoder

            self._model = load_sparse_encoder(self.model_name, self.device, encoding=self.encoding)
            self._model.max_seq_length = self.max_seq_length
        if self._model is None:
            from retrieval_kd.encoders.sparse import siamese_splade

            self._model = siamese_splade(self.model_name, self.max_seq_length, self.device)
        return self._model

    def encode(self, texts: list[str]):
        """Sparse vectors (torch sparse COO tensor, one row per text)."""
        return self.model.encode(texts, batch_size=self.batch_size, convert_to_sparse_tensor=True)

    def score(self, query: str, doc_ids: list[str], doc_texts: list[str]) -> np.ndarray:
        return self.score_batch([(query, doc_ids, doc_texts)])[0]

    def score_batch(self, items: list[tuple[str, list[str], list[str]]]) -> list[np.ndarray]:
        import torch

        todo = {d: t for _, ids, texts in items for d, t in zip(ids, texts) if d not in self._doc_cache}
        if todo:
            emb = self.encode(list(todo.values())).coalesce().to_dense()
            for i, d in enumerate(todo):
                self._doc_cache[d] = emb[i].to_sparse()
        queries = self.encode([q for q, _, _ in items]).to_dense()
        out = []
        for i, (_, ids, _) in enumerate(items):
            if not ids:
                out.append(np.zeros(0, dtype=np.float32))
                continue
            docs = torch.stack([self._doc_cache[d] for d in ids]).to_dense()
            out.append((docs @ queries[i]).cpu().numpy().astype(np.float32))
        return out
