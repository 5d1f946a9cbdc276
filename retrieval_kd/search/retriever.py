"""Query any index folder retrieval-kd writes, by text: dense FAISS, sparse inverted, or BM25.

``Retriever(folder)`` reads the folder's sidecar (:mod:`retrieval_kd.index.sidecar`) to know what it holds and how
its queries are encoded, and answers ``search(texts, k)`` with ranked :class:`~retrieval_kd.search.base.Hit`
lists; ``search_run({qid: text}, k)`` is the run ``rkd search`` writes for the same index (the CLI calls it).

* dense (``flat``, ``hnsw``, ``ivfpq``, ``opq-ivfpq``, ``pq``, ``distill-vq``): queries embedded by the sidecar's
  encoder (its max_seq_length, prompt and normalisation) and searched with FAISS; ``nprobe`` (IVF) and
  ``ef_search`` (HNSW) are set once.
* sparse: queries tokenised with the encoder's static weights (inference-free) or encoded by its query route.
* BM25: bm25s over the index's own vocabulary.

Models and the corpus load on first use, under a lock, so one ``Retriever`` may serve several threads.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from retrieval_kd.search.base import SearcherBase, check_k

logger = logging.getLogger(__name__)

__all__ = ["Retriever"]

_DEFAULT_MAX_SEQ_LENGTH = 256  # what corpus_embeddings encodes with when an index records none


class Retriever(SearcherBase):
    """Search one index folder by text.

    Args:
        folder: an index folder (``rkd index build``, ``rkd vq train``, ``rkd index build sparse``,
            ``rkd search bm25``, the pipeline's ``indexes/``).
        encoder: the query encoder (hub id or folder); default the sidecar's. Needed for an index built from bare
            ``--embeddings``, whose sidecar names none.
        nprobe: IVF lists visited per query (IVF indexes; default the index's own).
        ef_search: HNSW ``efSearch`` (HNSW indexes).
        dataset: the dataset whose corpus gives titles and texts (default the sidecar's); checked against the
            corpus the index was built on.
        max_seq_length: query truncation of a dense encoder (default the sidecar's, else 256).
        gpu: search a dense index on this GPU (faiss-gpu); without one, on CPU after a warning.
        encoding: the query encoder's backend (``torch``, ``onnx``, ...: :mod:`retrieval_kd.encoders.backends`;
            default ``torch``).
        cache_queries: keep dense query embeddings in the on-disk cache (repeated evaluations); a server passes
            False: its queries are new each request, and a cache file per request would only fill the disk.

    Raises:
        ConfigError: the folder is missing or holds no index; no encoder is known; a bad nprobe or ef_search
            (they are ignored by indexes that have no such parameter).
        IntegrityError: the folder's files do not belong together (see the index loaders).
    """

    def __init__(self, folder: str | os.PathLike, encoder: str | None = None, nprobe: int | None = None,
                 ef_search: int | None = None, *, dataset: str | None = None, max_seq_length: int | None = None,
                 gpu: int | None = None, encoding: str | None = None, cache_queries: bool = True):
        from retrieval_kd.errors import ConfigError
        from retrieval_kd.index.sidecar import check_encoder, index_kind, resolve_encoder

        self.folder = Path(folder)
        self.kind = index_kind(self.folder)
        self.name = self.folder.resolve().name
        self.nprobe = None if nprobe is None else check_k(nprobe, "nprobe")
        self.ef_search = None if ef_search is None else check_k(ef_search, "ef_search")
        if self.kind != "dense" and (nprobe is not None or ef_search is not None or gpu is not None):
            logger.info("%s: a %s index; nprobe, ef_search and gpu (dense FAISS indexes) are ignored", self.folder,
                        self.kind)
            self.nprobe = self.ef_search = gpu = None
        if self.kind == "bm25" and encoder:
            raise ConfigError(f"{self.folder}: a BM25 index encodes queries by its own tokenizer; give no encoder")
        self._dataset = dataset
        self._encoding = encoding
        self.cache_queries = bool(cache_queries)
        self._lock = threading.Lock()
        self._model = None
        self._query_side = None
        self._collection = None
        self._load_index(gpu)
        self.encoder = resolve_encoder(self.meta, self.folder, encoder) if self.kind != "bm25" else None
        if self.kind != "bm25":
            if self.encoder is None:
                raise ConfigError(f"{self.folder}: its sidecar names no encoder (the index was built from bare "
                                  "embeddings); pass encoder= (--model / --encoder on the command line): the model "
                                  "that made the embeddings")
            check_encoder(self.meta, self.folder, self.encoder)
        self.max_seq_length = max_seq_length or self.meta.get("max_seq_length") or _DEFAULT_MAX_SEQ_LENGTH
        self.query_prompt = self.meta.get("query_prompt")
        self.normalize = bool(self.meta.get("normalize", self.kind == "dense"))

    def _load_index(self, gpu: int | None) -> None:
        if self.kind == "dense":
            from retrieval_kd.index.dense import load_index, set_nprobe

            self.index, self.doc_ids, self.meta = load_index(self.folder)
            if gpu is not None:
                from retrieval_kd.index import to_gpu

                self.index = to_gpu(self.index, device=gpu) or self.index
            set_nprobe(self.index, self.nprobe, self.ef_search)
        elif self.kind == "sparse":
            from retrieval_kd.index.sparse import SparseIndex

            self.index, self.meta = SparseIndex.load(self.folder)
            self.doc_ids = self.index.doc_ids
        else:
            from retrieval_kd.index.dense import read_sidecar
            from retrieval_kd.search.bm25 import BM25Index

            self.index = BM25Index.load(self.folder)
            self.doc_ids = self.index.doc_ids
            self.meta = {**read_sidecar(self.folder), **self.index.meta}

    # -- lazily loaded parts -------------------------------------------------------------------------------------
    def _dense_model(self):
        with self._lock:
            if self._model is None:
                from retrieval_kd.encoders import load_encoder

                self._model = load_encoder(self.encoder, self.max_seq_length, encoding=self._encoding or "torch",
                                           normalize=self.normalize)
            return self._model

    def _sparse_query_side(self):
        with self._lock:
            if self._query_side is None:
                from retrieval_kd.index.sparse import query_side

                self._query_side = query_side(self.encoder, self._encoding or "torch")
            return self._query_side

    def collection(self):
        """The :class:`~retrieval_kd.data.Collection` of the corpus this index was built on (``dataset=``, else the
        sidecar's), checked against the index; :class:`~retrieval_kd.errors.ConfigError` when none is known."""
        from retrieval_kd.errors import ConfigError
        from retrieval_kd.index.sidecar import resolve_dataset

        with self._lock:
            if self._collection is None:
                from retrieval_kd.data import load_collection
                from retrieval_kd.index.dense import check_corpus

                ref = resolve_dataset(self.meta, self.folder, self._dataset)
                if ref is None:
                    raise ConfigError(f"{self.folder}: its sidecar names no dataset (built from bare embeddings); "
                                      "pass dataset= (--dataset on the command line) for titles, texts and queries")
                collection = load_collection(ref)
                if collection.corpus is None:
                    raise ConfigError(f"dataset {ref!r} has no corpus; give the dataset {self.folder} was built on")
                check_corpus(self.meta, collection.corpus, self.folder, self.doc_ids)
                self._collection = collection
            return self._collection

    # -- search --------------------------------------------------------------------------------------------------
    def search_run(self, queries: Mapping[str, str], k: int = 1000) -> dict[str, dict[str, float]]:
        k = check_k(k)
        queries = dict(queries)
        if not queries:
            return {}
        if self.kind == "bm25":
            return self.index.search(queries, top_k=k)
        if self.kind == "sparse":
            return self.index.search_many(self._sparse_query_side()(queries), k=k)
        return self._dense_run(queries, k)

    def _dense_run(self, queries: dict[str, str], k: int) -> dict[str, dict[str, float]]:
        from retrieval_kd.encoders import query_embeddings
        from retrieval_kd.errors import ConfigError
        from retrieval_kd.index.dense import search_index
        from retrieval_kd.search.dense import hits_to_run

        q = query_embeddings(self.encoder, queries, self.max_seq_length, self.normalize, encoder=self._dense_model(),
                             prompt=self.query_prompt, encoding=self._encoding or "torch", cache=self.cache_queries)
        if q.shape[1] != self.index.d:
            raise ConfigError(f"{self.folder}: the index holds {self.index.d}-d vectors, {self.encoder} embeds "
                              f"queries in {q.shape[1]} dimensions; give the encoder the index was built with")
        scores, rows = search_index(self.index, q, min(k, self.index.ntotal))
        return hits_to_run(scores, rows, self.doc_ids, list(queries))

    def documents(self, doc_ids: Sequence[str]) -> list[dict]:
        corpus = self.collection().corpus
        return [corpus[d] for d in doc_ids]

    def describe(self) -> dict:
        from retrieval_kd.index.sidecar import resolve_dataset

        meta = self.meta
        default_similarity = {"sparse": "dot", "bm25": "bm25"}.get(self.kind, "cosine" if self.normalize else "ip")
        info = {"name": self.name, "folder": str(self.folder), "kind": self.kind,
                "type": meta.get("type") or meta.get("kind") or self.kind,
                "encoder": self.encoder, "encoder_revision": meta.get("encoder_revision"),
                "query_prompt": self.query_prompt, "normalize": self.normalize,
                "similarity": meta.get("similarity") or default_similarity,
                "dataset": resolve_dataset(meta, self.folder, self._dataset), "corpus_key": meta.get("corpus_key"),
                "ntotal": len(self.doc_ids)}
        if self.kind == "dense":
            info.update(dim=int(self.index.d), max_seq_length=self.max_seq_length, nprobe=self.nprobe,
                        ef_search=self.ef_search, bytes_per_vector=meta.get("bytes_per_vector"),
                        faiss_class=meta.get("faiss_class"))
        elif self.kind == "sparse":
            info.update(vocab_size=meta.get("vocab_size"), nnz_per_doc=meta.get("nnz_per_doc"),
                        prune=meta.get("prune"))
        else:
            info["params"] = meta.get("params")
        return info
