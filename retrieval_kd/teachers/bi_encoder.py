"""Bi-encoder teacher: cosine (or dot) similarity of SentenceTransformer embeddings.

Each passage is encoded once per teacher and kept by doc id for the rest of the run, so a passage that is a
candidate of many queries costs one forward pass (encode each passage once per teacher, reuse it).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from retrieval_kd.encoders.backends import resolve_encoding
from retrieval_kd.models.revision import model_revision
from retrieval_kd.teachers.base import Teacher

logger = logging.getLogger(__name__)

__all__ = ["BiEncoderTeacher"]


class BiEncoderTeacher(Teacher):
    """Scores with a :class:`sentence_transformers.SentenceTransformer`.

    Args:
        model: hub id or local folder (e.g. ``sentence-transformers/all-MiniLM-L6-v2``).
        max_seq_length: passage truncation.
        batch_size: encoding batch size.
        normalize: cosine similarity (True) or raw dot product (False).
        query_prompt: a prompt prepended to queries (e.g. ``"query: "`` for E5 models).
        full_corpus: on :meth:`prepare`, take every passage's embedding from the on-disk corpus cache
            (:func:`retrieval_kd.encoders.corpus_embeddings`), shared with dense search and Distill-VQ.
        encoding: the backend that encodes (:mod:`retrieval_kd.encoders.backends`: ``torch``, ``torch-bf16``,
            ``onnx``, ``onnx-int8``, ``openvino``, ``auto``); part of the teacher's fingerprint unless ``torch``.
    """

    kind = "bi-encoder"

    def __init__(self, model: str = "sentence-transformers/all-MiniLM-L6-v2", max_seq_length: int = 256,
                 batch_size: int = 32, normalize: bool = True, query_prompt: str | None = None, device: str | None = None,
                 full_corpus: bool = True, encoding: str = "torch"):
        self.model_name = model
        self.encoding = encoding
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.normalize = normalize
        self.query_prompt = query_prompt
        self.device = device
        self._model = None
        self.full_corpus = full_corpus
        self._doc_cache: dict[str, np.ndarray] = {}
        self._corpus = None
        self._corpus_emb: np.ndarray | None = None

    def prepare(self, collection) -> None:
        if self.full_corpus and collection.corpus is not None:
            from retrieval_kd.encoders import corpus_embeddings

            self._corpus = collection.corpus
            self._corpus_emb = corpus_embeddings(self.model_name, collection.corpus, self.max_seq_length,
                                                 self.normalize, self.batch_size, encoder=self._model,
                                                 encoding=self.encoding)

    def config(self) -> dict[str, Any]:
        return {"model": self.model_name, "revision": model_revision(self.model_name),
                "max_seq_length": self.max_seq_length, "normalize": self.normalize, "query_prompt": self.query_prompt,
                **resolve_encoding(self.encoding, "dense", self.model_name, check=False).cache_fields()}

    @property
    def model(self):
        if self._model is None and resolve_encoding(self.encoding, "dense", self.model_name).backend != "torch":
            from retrieval_kd.encoders import load_encoder

            self._model = load_encoder(self.model_name, self.max_seq_length, self.device, encoding=self.encoding,
                                       normalize=self.normalize)
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            from retrieval_kd.models.resolve import resolve_model

            self._model = SentenceTransformer(resolve_model(self.model_name, "teacher model"), device=self.device)
            self._model.max_seq_length = self.max_seq_length
        return self._model

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        return self.model.encode(queries, batch_size=self.batch_size, prompt=self.query_prompt,
                                 normalize_embeddings=self.normalize, convert_to_numpy=True)

    def encode_docs(self, doc_ids: list[str], doc_texts: list[str]) -> np.ndarray:
        """Embeddings of passages: from the corpus cache where :meth:`prepare` read one, else (and for a passage
        the corpus does not hold, e.g. a document with a sentence cut out) encoded from the text, once per id."""
        if self._corpus_emb is None:
            return self._encode_new(doc_ids, doc_texts)
        if not doc_ids:
            return self._corpus_emb[:0]
        try:  # the usual case, one lookup: every passage is the corpus's
            return np.asarray(self._corpus_emb[self._corpus.rows(doc_ids)])
        except KeyError:
            inside = self._corpus.has(doc_ids)
        out = np.empty((len(doc_ids), self._corpus_emb.shape[1]), dtype=np.float32)
        out[inside] = self._corpus_emb[self._corpus.rows([d for d, i in zip(doc_ids, inside) if i])]
        out[~inside] = self._encode_new([d for d, i in zip(doc_ids, inside) if not i],
                                        [t for t, i in zip(doc_texts, inside) if not i])
        return out

    def _encode_new(self, doc_ids: list[str], doc_texts: list[str]) -> np.ndarray:
        todo = [(d, t) for d, t in dict(zip(doc_ids, doc_texts)).items() if d not in self._doc_cache]
        if todo:
            emb = self.model.encode([t for _, t in todo], batch_size=self.batch_size,
                                    normalize_embeddings=self.normalize, convert_to_numpy=True)
            self._doc_cache.update({d: e for (d, _), e in zip(todo, emb)})
        return np.stack([self._doc_cache[d] for d in doc_ids]) if doc_ids else np.zeros((0, 1), dtype=np.float32)

    def score(self, query: str, doc_ids: list[str], doc_texts: list[str]) -> np.ndarray:
        return self.score_batch([(query, doc_ids, doc_texts)])[0]

    def score_batch(self, items: list[tuple[str, list[str], list[str]]]) -> list[np.ndarray]:
        all_ids = [d for _, ids, _ in items for d in ids]
        all_texts = [t for _, _, texts in items for t in texts]
        self.encode_docs(all_ids, all_texts)
        q = self.encode_queries([query for query, _, _ in items])
        return [self.encode_docs(ids, texts) @ q[i] for i, (_, ids, texts) in enumerate(items)]
