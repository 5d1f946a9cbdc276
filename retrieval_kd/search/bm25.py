"""BM25 retrieval on bm25s (Lu 2024, "BM25S: Orders of magnitude faster lexical search via eager sparse scoring").

No BM25 is written here: bm25s scores, PyStemmer stems. This module adds what a retrieval toolkit needs on top:
building from a streaming :class:`~retrieval_kd.data.Corpus`, a persisted index folder with its doc-id map and a
JSON sidecar of its parameters, batched top-k search into a run dict, and scoring given candidates (the BM25
teacher reranks with it).

Defaults follow the usual BEIR baseline (Pyserini/Anserini): Lucene BM25 with k1=0.9, b=0.4, English
stopwords and Snowball stemming, documents indexed as ``title + " " + text``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["BM25Params", "BM25Index", "bm25_index_for"]

_SIDECAR = "rkd_index.json"


_BM25_METHODS = ("robertson", "lucene", "atire", "bm25l", "bm25+")


@dataclass(frozen=True)
class BM25Params:
    """BM25's parameters, checked on creation (a bad value raises :class:`~retrieval_kd.errors.ConfigError` naming
    it, before bm25s sees it): ``k1 >= 0`` (term-frequency saturation), ``0 <= b <= 1`` (length normalisation),
    ``method`` one of bm25s' variants, ``stemmer`` a PyStemmer language or None."""

    k1: float = 0.9
    b: float = 0.4
    method: str = "lucene"
    stemmer: str | None = "english"
    stopwords: str | None = "en"
    lower: bool = True

    def __post_init__(self) -> None:
        import math

        from retrieval_kd.errors import ConfigError

        for name, high in (("k1", math.inf), ("b", 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
                bound = ">= 0" if high == math.inf else "in [0, 1]"
                raise ConfigError(f"BM25 {name}={value!r}: must be a number {bound} (default {name}="
                                  f"{getattr(BM25Params, name)})")
            object.__setattr__(self, name, float(value))
        if self.method not in _BM25_METHODS:
            raise ConfigError(f"BM25 method={self.method!r}: use one of {', '.join(_BM25_METHODS)}")
        if self.stemmer is not None and not isinstance(self.stemmer, str):
            raise ConfigError(f"BM25 stemmer={self.stemmer!r}: a PyStemmer language name (e.g. english) or None")
        if self.stopwords is not None and not isinstance(self.stopwords, str):
            raise ConfigError(f"BM25 stopwords={self.stopwords!r}: a language code (e.g. en) or None")
        if not isinstance(self.lower, bool):
            raise ConfigError(f"BM25 lower={self.lower!r}: must be true or false")


class BM25Index:
    """A bm25s index over a corpus, with the doc ids in corpus order.

    Build with :meth:`build`, persist with :meth:`save`, reopen with :meth:`load`.
    """

    def __init__(self, retriever, tokenizer, doc_ids: list[str], params: BM25Params, meta: dict | None = None):
        self.retriever = retriever
        self.tokenizer = tokenizer
        self.doc_ids = doc_ids
        self.params = params
        self.meta = dict(meta or {})
        self._row_of: dict[str, int] | None = None

    @staticmethod
    def _make_tokenizer(params: BM25Params):
        import bm25s.tokenization

        stemmer = None
        if params.stemmer:
            import Stemmer

            stemmer = Stemmer.Stemmer(params.stemmer)
        return bm25s.tokenization.Tokenizer(lower=params.lower, stopwords=params.stopwords or [], stemmer=stemmer)

    @classmethod
    def build(
        cls,
        documents: Iterable[Mapping[str, str]],
        params: BM25Params | None = None,
        meta: dict | None = None,
        show_progress: bool = False,
    ) -> BM25Index:
        """Index documents (dicts with ``_id``, ``title``, ``text``), streamed once."""
        import bm25s

        params = params or BM25Params()
        tokenizer = cls._make_tokenizer(params)
        doc_ids: list[str] = []

        def texts():
            for doc in documents:
                doc_ids.append(doc["_id"])
                title = doc.get("title") or ""
                yield f"{title} {doc['text']}".strip() if title else doc["text"]

        n_docs = len(documents) if hasattr(documents, "__len__") else None
        stream = texts() if n_docs is not None else list(texts())  # bm25s needs the length of a generator
        tokens = tokenizer.tokenize(
            stream, update_vocab=True, return_as="tuple", show_progress=show_progress, length=n_docs
        )
        retriever = bm25s.BM25(k1=params.k1, b=params.b, method=params.method)
        retriever.index(tokens, show_progress=show_progress)
        logger.info("BM25 index: %d documents, %d terms", len(doc_ids), len(tokenizer.get_vocab_dict()))
        return cls(retriever, tokenizer, doc_ids, params, meta)

    # -- persistence -------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the index folder atomically (:func:`retrieval_kd.utils.fs.atomic_folder`); an existing folder is
        replaced only when retrieval-kd wrote it as a BM25 index (else ``overwrite=True``)."""
        from retrieval_kd.index.dense import doc_ids_digest
        from retrieval_kd.index.sidecar import source_record
        from retrieval_kd.utils.fs import atomic_folder

        path = Path(path)
        with atomic_folder(path, "bm25-index", overwrite=overwrite) as tmp:
            self.retriever.save(str(tmp), show_progress=False)
            self.tokenizer.save_vocab(str(tmp))
            self.tokenizer.save_stopwords(str(tmp))
            (tmp / "docids.json").write_text(json.dumps(self.doc_ids))
            sidecar = {"type": "bm25", "library": "bm25s", "params": asdict(self.params),
                       "documents": len(self.doc_ids), "doc_ids_sha256": doc_ids_digest(self.doc_ids)}
            sidecar.update(self.meta)
            sidecar.update(source_record(self.meta, path, "bm25"))
            (tmp / _SIDECAR).write_text(json.dumps(sidecar, indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> BM25Index:
        import bm25s

        from retrieval_kd.errors import IntegrityError
        from retrieval_kd.index.dense import read_doc_ids, read_sidecar
        from retrieval_kd.utils.fs import recover_folder

        path = Path(path)
        recover_folder(path)
        sidecar_path = path / _SIDECAR
        if not sidecar_path.exists():
            raise FileNotFoundError(f"{path} is not a BM25 index folder (no {_SIDECAR})")
        sidecar = read_sidecar(path)
        if not isinstance(sidecar, dict) or sidecar.get("type") != "bm25" or not isinstance(sidecar.get("params"), dict):
            raise IntegrityError(f"{sidecar_path}: not the sidecar of a BM25 index; rebuild it")
        try:
            params = BM25Params(**sidecar["params"])
            tokenizer = cls._make_tokenizer(params)
            tokenizer.load_vocab(str(path))
            tokenizer.load_stopwords(str(path))
            retriever = bm25s.BM25.load(str(path), load_corpus=False)
        except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
            raise IntegrityError(f"{path}: unreadable BM25 index ({type(exc).__name__}: {exc}); rebuild it") from None
        doc_ids = read_doc_ids(path / "docids.json", int(sidecar.get("documents", -1)), sidecar.get("doc_ids_sha256"))
        meta = {k: v for k, v in sidecar.items() if k not in ("type", "library", "params", "documents",
                                                              "doc_ids_sha256")}
        return cls(retriever, tokenizer, doc_ids, params, meta)

    # -- search ------------------------------------------------------------------------------------------------
    def _tokenize_queries(self, texts: list[str]):
        return self.tokenizer.tokenize(texts, update_vocab=False, return_as="ids", show_progress=False)

    def search(
        self,
        queries: Mapping[str, str],
        top_k: int = 1000,
        n_threads: int = 0,
        show_progress: bool = False,
    ) -> dict[str, dict[str, float]]:
        """Top-k documents per query, as a run dict ``{qid: {doc_id: score}}``.

        Documents with a zero score (no query term) are left out, as Lucene does.
        """
        qids = list(queries)
        if not qids:
            return {}
        k = min(top_k, len(self.doc_ids))
        tokens = self._tokenize_queries([queries[q] for q in qids])
        rows, scores = self.retriever.retrieve(
            tokens, k=k, show_progress=show_progress, n_threads=n_threads, return_as="tuple"
        )
        run: dict[str, dict[str, float]] = {}
        for qid, r, s in zip(qids, rows, scores):
            keep = s > 0
            run[qid] = {self.doc_ids[int(i)]: float(v) for i, v in zip(r[keep], s[keep])}
        return run

    def score(self, query: str, doc_ids: Iterable[str]) -> np.ndarray:
        """BM25 scores of given documents for one query (reranking / the BM25 teacher)."""
        if self._row_of is None:
            self._row_of = {d: i for i, d in enumerate(self.doc_ids)}
        tokens = self._tokenize_queries([query])
        query_ids = tokens.ids[0] if hasattr(tokens, "ids") else tokens[0]
        all_scores = self.retriever.get_scores(list(query_ids)) if query_ids else np.zeros(len(self.doc_ids))
        rows = [self._row_of[d] for d in doc_ids]
        return np.asarray(all_scores, dtype=np.float32)[rows]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def bm25_index_for(collection, index_dir: Path | None = None, params=None, rebuild: bool = False,
                   overwrite: bool = False):
    """Open the BM25 index of a collection, building and saving it when absent or stale.

    A folder at ``index_dir`` that is not a BM25 index retrieval-kd wrote is never replaced unless ``overwrite``.
    """
    from retrieval_kd.paths import indexes_dir
    from retrieval_kd.utils.fs import check_output_folder, file_lock
    from retrieval_kd.utils.progress import progress_enabled

    params = params or BM25Params()
    if collection.corpus is None:
        raise ValueError(f"dataset {collection.name!r} has no corpus to index")
    explicit = index_dir is not None  # a folder the caller named is not silently rebuilt for another corpus
    index_dir = Path(index_dir or indexes_dir() / "bm25" / _safe(collection.name))
    corpus_key = collection.corpus.store_path.name
    # processes sharing the folder (torchrun ranks, two commands) wait for one another, then reuse its build
    with file_lock(index_dir.with_name(f"{index_dir.name}.build"), what="the BM25 index", wait=True):
        if index_dir.exists() and not rebuild:
            try:
                index = BM25Index.load(index_dir)
            except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
                logger.warning("cannot open BM25 index %s (%s); rebuilding", index_dir, exc)
                index = None
            if index is not None:
                if index.meta.get("corpus_key") == corpus_key and asdict(index.params) == asdict(params):
                    logger.info("using BM25 index %s", index_dir)
                    return index
                if explicit and index.meta.get("corpus_key") not in (None, corpus_key):
                    from retrieval_kd.errors import IntegrityError

                    raise IntegrityError(f"{index_dir}: a BM25 index of another corpus "
                                         f"({index.meta.get('dataset')}) than {collection.corpus.path}; search it "
                                         "with its own dataset, or pass --rebuild to index this corpus there")
                logger.info("BM25 index %s is stale (corpus or parameters changed); rebuilding", index_dir)
        check_output_folder(index_dir, "bm25-index", overwrite)  # before the corpus is indexed
        index = BM25Index.build(
            collection.corpus, params, meta={"dataset": collection.name, "corpus_key": corpus_key},
            show_progress=progress_enabled(),
        )
        index.save(index_dir, overwrite=overwrite)
    logger.info("saved BM25 index to %s", index_dir)
    return index
