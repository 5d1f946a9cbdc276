"""retrieval-kd: train retrievers by knowledge distillation and build the ANN indexes that serve them.

The package follows the flow of the work: ``data`` -> ``teachers`` -> ``students`` -> ``quantization`` ->
``index`` -> ``search`` -> ``eval``. The names a script needs are importable from here; each is loaded from its
module on first use (PEP 562), so ``import retrieval_kd`` stays fast and loads neither torch nor faiss::

    from retrieval_kd import Retriever, load_collection

    hits = Retriever("indexes/scifact-dvq48").search("what causes anemia", k=10)
"""

from __future__ import annotations

import importlib
import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

#: public name -> the module it lives in
_EXPORTS = {
    **dict.fromkeys(("load_collection", "Corpus", "read_run", "write_run", "read_qrels", "read_queries"),
                    "retrieval_kd.data"),
    **dict.fromkeys(("evaluate", "compare"), "retrieval_kd.eval"),
    **dict.fromkeys(("parse_teacher", "EnsembleTeacher", "score_candidates", "ScoreStore"), "retrieval_kd.teachers"),
    **dict.fromkeys(("train_dense", "train_sparse", "load_config", "load_sparse_config"), "retrieval_kd.students"),
    **dict.fromkeys(("corpus_embeddings", "query_embeddings"), "retrieval_kd.encoders"),
    **dict.fromkeys(("DistillVQConfig", "train_distill_vq"), "retrieval_kd.quantization"),
    "export_faiss": "retrieval_kd.index.faiss_export",
    **dict.fromkeys(("build_faiss_index", "save_index", "load_index", "corpus_identity"), "retrieval_kd.index.dense"),
    "SparseIndex": "retrieval_kd.index.sparse",
    "BM25Index": "retrieval_kd.search.bm25",
    "Retriever": "retrieval_kd.search.retriever",
    "HybridRetriever": "retrieval_kd.search.hybrid",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'retrieval_kd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
