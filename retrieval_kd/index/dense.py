"""Dense FAISS indexes on disk: build the baselines, save with a JSON sidecar, load, search.

An index folder holds ``index.faiss`` (``faiss.write_index``: any FAISS user can load it), ``docids.json``
(FAISS id -> doc id) and ``rkd_index.json`` (type, encoder id, parameters, bytes per vector). Folders are written
to a temporary name and renamed into place.

Baseline types, all inner product (the encoders here are cosine models with normalised embeddings):
``flat`` (exact), ``hnsw`` (``IndexHNSWFlat``), ``ivfpq`` (``IVFn,PQm``), ``opq-ivfpq`` (``OPQm,IVFn,PQm``),
``pq`` (``PQm``), each trained by FAISS; ``distill-vq`` is exported from a learned module
(:mod:`retrieval_kd.quantization`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["INDEX_TYPES", "build_faiss_index", "save_index", "load_index", "set_nprobe", "bytes_per_vector",
           "search_index", "search_threads"]

INDEX_TYPES = ("flat", "hnsw", "ivfpq", "opq-ivfpq", "pq", "distill-vq")
_SIDECAR = "rkd_index.json"


def build_faiss_index(kind: str, vectors: np.ndarray, nlist: int = 64, m: int = 48, nbits: int = 8,
                      hnsw_m: int = 32, ef_construction: int = 200, seed: int = 123):
    """Train (if needed) and fill a FAISS baseline of type ``kind`` with ``vectors`` (ids = rows)."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    d = x.shape[1]
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, ip)
        index.hnsw.efConstruction = ef_construction
    # "np": no polysemous training. It only permutes the codewords for Hamming pre-filtering, which these
    # indexes never use (polysemous_ht = 0), so results are identical; it cost ~15x the training time here.
    elif kind == "ivfpq":
        index = faiss.index_factory(d, f"IVF{nlist},PQ{m}x{nbits}np", ip)
    elif kind == "opq-ivfpq":
        index = faiss.index_factory(d, f"OPQ{m},IVF{nlist},PQ{m}x{nbits}np", ip)
    elif kind == "pq":
        index = faiss.index_factory(d, f"PQ{m}x{nbits}np", ip)
    else:
        raise ValueError(f"unknown FAISS baseline {kind!r}; use one of {INDEX_TYPES[:-1]} "
                         "(distill-vq indexes come from `rkd vq train`)")
    if not index.is_trained:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.seed = seed
        index.train(x)
    index.add(x)
    return index


@contextlib.contextmanager
def search_threads(n: int):
    """Run FAISS with ``n`` OpenMP threads inside the block, then restore the previous count.

    FAISS and torch share the OpenMP runtime here: ``faiss.omp_set_num_threads(1)`` also leaves torch on one
    thread (encoding a corpus afterwards ran 1.45x slower), so the limit is scoped, not set once.
    """
    import faiss
    import torch

    before = torch.get_num_threads()
    faiss.omp_set_num_threads(max(1, n))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
        torch.set_num_threads(before)


def set_nprobe(index, nprobe: int | None, ef_search: int | None = None) -> None:
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and nprobe is not None:
        ivf.nprobe = nprobe
    elif nprobe is not None and _on_gpu(index):  # a GpuIndexIVF* (or an OPQ chain around one) is no IndexIVF
        faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", nprobe)
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None and ef_search is not None:
        hnsw.efSearch = ef_search


def inner_index(index):
    """The index that stores the codes: the one an ``IndexPreTransform`` (the OPQ chain) wraps, or ``index``."""
    import faiss

    return faiss.downcast_index(index.index if isinstance(index, faiss.IndexPreTransform) else index)


def _on_gpu(index) -> bool:
    import faiss

    return hasattr(faiss, "GpuIndex") and isinstance(inner_index(index), faiss.GpuIndex)


def bytes_per_vector(index) -> float:
    """Stored bytes per vector of the codes (flat/HNSW: float32 vectors, HNSW links counted apart)."""
    import faiss

    inner = inner_index(index)
    if hasattr(inner, "code_size"):
        return float(inner.code_size)
    if hasattr(inner, "storage"):
        return float(faiss.downcast_index(inner.storage).code_size)
    return float(index.d * 4)


def search_index(index, queries: np.ndarray, k: int, nprobe: int | None = None, ef_search: int | None = None):
    set_nprobe(index, nprobe, ef_search)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def save_index(index, folder: str | os.PathLike, doc_ids: list[str], meta: dict) -> Path:
    import faiss

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    faiss.write_index(index, str(tmp / "index.faiss"))
    if len(doc_ids) != index.ntotal:
        raise ValueError(f"{len(doc_ids)} doc ids for an index of {index.ntotal} vectors")
    (tmp / "docids.json").write_text(json.dumps(list(doc_ids)))
    sidecar = {**meta, "ntotal": int(index.ntotal), "dim": int(index.d), "bytes_per_vector": bytes_per_vector(index),
               "faiss_class": type(faiss.downcast_index(index)).__name__}
    (tmp / _SIDECAR).write_text(json.dumps(sidecar, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def load_index(folder: str | os.PathLike):
    """``(index, doc_ids, meta)`` of an index folder."""
    import faiss

    folder = Path(folder)
    if not (folder / _SIDECAR).exists():
        raise FileNotFoundError(f"{folder} is not an index folder (no {_SIDECAR}); build one with rkd index build")
    meta = json.loads((folder / _SIDECAR).read_text())
    index = faiss.read_index(str(folder / "index.faiss"))
    doc_ids = json.loads((folder / "docids.json").read_text())
    return index, doc_ids, meta
