"""Cross-encoder teacher on sentence-transformers' :class:`~sentence_transformers.CrossEncoder`.

No MS MARCO cross-encoder ships offline here; real use names a hub id such as
``cross-encoder/ms-marco-MiniLM-L6-v2`` (the teacher of many distillation recipes),
``cross-encoder/ms-marco-MiniLM-L12-v2`` or ``BAAI/bge-reranker-v2-m3``. Scores are the raw logits
(no sigmoid), as Margin-MSE distillation uses them (Hofstaetter et al. 2020).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retrieval_kd.models.revision import model_revision
from retrieval_kd.teachers.base import Teacher

__all__ = ["CrossEncoderTeacher"]


class CrossEncoderTeacher(Teacher):
    """Args:
    model: hub id or local folder of a CrossEncoder.
    max_length: truncation of the (query, passage) pair.
    batch_size: pairs per forward pass.
    """

    kind = "cross-encoder"

    def __init__(self, model: str = "cross-encoder/ms-marco-MiniLM-L6-v2", max_length: int = 512,
                 batch_size: int = 32, device: str | None = None):
        self.model_name = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        self._model = None

    def config(self) -> dict[str, Any]:
        return {"model": self.model_name, "revision": model_revision(self.model_name), "max_length": self.max_length,
                "activation": "identity"}

    @property
    def model(self):
        if self._model is None:
            import torch
            from sentence_transformers import CrossEncoder

            from retrieval_kd.models.resolve import resolve_model

            self._model = CrossEncoder(resolve_model(self.model_name, "teacher model"), max_length=self.max_length,
                                       device=self.device,
                                       activation_fn=torch.nn.Identity())
        return self._model

    def score(self, query: str, doc_ids: list[str], doc_texts: list[str]) -> np.ndarray:
        return self.score_batch([(query, doc_ids, doc_texts)])[0]

    def score_batch(self, items: list[tuple[str, list[str], list[str]]]) -> list[np.ndarray]:
        pairs = [(query, text) for query, _, texts in items for text in texts]
        if not pairs:
            return [np.zeros(0, dtype=np.float32) for _ in items]
        flat = np.asarray(self.model.predict(pairs, batch_size=self.batch_size, convert_to_numpy=True), dtype=np.float32)
        flat = flat.reshape(len(pairs), -1)[:, -1]  # one logit per pair (last column for 2-class heads)
        out, start = [], 0
        for _, ids, _ in items:
            out.append(flat[start:start + len(ids)])
            start += len(ids)
        return out
