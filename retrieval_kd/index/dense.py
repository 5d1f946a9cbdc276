"""Dense FAISS indexes on disk: build the baselines, save with a JSON sidecar, load, search.

An index folder holds ``index.faiss`` (``faiss.write_index``: any FAISS user can load it), ``docids.json``
(FAISS id -> doc id) and ``rkd_index.json`` (type, encoder id, parameters, bytes per vector, the corpus it was
built on). Folders are written aside and swapped in whole (:func:`retrieval_kd.utils.fs.atomic_folder`); loading
checks that the three files belong together.

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
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["INDEX_TYPES", "build_faiss_index", "save_index", "load_index", "set_nprobe", "bytes_per_vector",
           "search_index", "search_threads", "corpus_identity", "check_corpus", "read_sidecar", "read_doc_ids"]

INDEX_TYPES = ("flat", "hnsw", "ivfpq", "opq-ivfpq", "pq", "distill-vq")
_SIDECAR = "rkd_index.json"


def _positive_int(name: str, value, minimum: int = 1) -> int:
    from retrieval_kd.errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name}={value!r}: must be an integer >= {minimum}")
    return int(value)


def check_index_params(kind: str, n: int, d: int, nlist: int = 64, m: int = 48, nbits: int = 8,
                       hnsw_m: int = 32, ef_construction: int = 200) -> None:
    """Raise :class:`~retrieval_kd.errors.ConfigError` for parameters FAISS would crash on or misuse.

    FAISS checks some of these with an exception and some not at all (``nlist=0`` crashes the process, ``nbits=0``
    builds an index that returns nothing useful), so they are checked here, before FAISS sees them: ``n`` vectors
    of dimension ``d``; IVF needs ``1 <= nlist <= n``; PQ needs ``m`` to divide ``d`` and ``n >= 2**nbits``
    training vectors (``1 <= nbits <= 16``); HNSW needs ``hnsw_m >= 2``. ``kind`` ``distill-vq`` is checked as
    ``opq-ivfpq``.
    """
    from retrieval_kd.errors import ConfigError

    if kind not in INDEX_TYPES:
        raise ConfigError(f"unknown index type {kind!r}; use one of {', '.join(INDEX_TYPES)}")
    if n < 1 or d < 1:
        raise ConfigError(f"no vectors to index ({n} vectors of dimension {d})")
    if kind == "hnsw":
        _positive_int("hnsw_m", hnsw_m, 2)
        _positive_int("ef_construction", ef_construction)
    if kind in ("ivfpq", "opq-ivfpq", "distill-vq"):
        nlist = _positive_int("nlist", nlist)
        if nlist > n:
            raise ConfigError(f"nlist={nlist} is more than the {n} vectors to index: IVF needs at least one training "
                              f"vector per list; use nlist <= {n} (about 4*sqrt(n) = {max(1, int(4 * n ** 0.5))} "
                              "is usual)")
    if kind in ("ivfpq", "opq-ivfpq", "pq", "distill-vq"):
        m = _positive_int("m", m)
        if d % m:
            divisors = [k for k in range(1, d + 1) if d % k == 0]
            raise ConfigError(f"m={m} does not divide the dimension {d}: each of the m sub-quantizers codes d/m "
                              f"dimensions; use one of {', '.join(map(str, divisors))}")
        nbits = _positive_int("nbits", nbits)
        if nbits > 16:
            raise ConfigError(f"nbits={nbits}: PQ codes have 1..16 bits per sub-quantizer (8 is usual)")
        if n < 2 ** nbits:
            raise ConfigError(f"nbits={nbits} needs at least {2 ** nbits} training vectors (one per codeword), "
                              f"got {n}; lower nbits or index more vectors")


def build_faiss_index(kind: str, vectors: np.ndarray, nlist: int = 64, m: int = 48, nbits: int = 8,
                      hnsw_m: int = 32, ef_construction: int = 200, seed: int = 123):
    """Train (if needed) and fill a FAISS baseline of type ``kind`` with ``vectors`` (ids = rows).

    Parameters are checked first (:func:`check_index_params`); so are the vectors (a finite 2-D matrix).
    """
    import faiss

    from retrieval_kd.errors import ConfigError

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ConfigError(f"vectors must be a 2-D matrix (one row per document), got shape {x.shape}")
    if kind != "distill-vq":
        check_index_params(kind, x.shape[0], x.shape[1], nlist, m, nbits, hnsw_m, ef_construction)
    for start in range(0, x.shape[0], 1 << 18):  # in blocks: no n x d boolean matrix at once
        if not np.isfinite(x[start:start + (1 << 18)]).all():
            raise ValueError(f"vectors hold NaN or infinite values (in rows {start}..{start + (1 << 18) - 1}); "
                              "check the encoder or the embeddings file")
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


def save_index(index, folder: str | os.PathLike, doc_ids: list[str], meta: dict, overwrite: bool = False,
               extra=None) -> Path:
    """Write an index folder atomically (:func:`retrieval_kd.utils.fs.atomic_folder`).

    ``extra(tmp_folder)`` may add files (e.g. the Distill-VQ module's safetensors) before the folder is swapped in.
    An existing ``folder`` is replaced only when retrieval-kd wrote it as an index (else ``overwrite=True``).
    ``meta`` should name the corpus (``corpus_key``, :func:`corpus_identity`) so a search with another dataset's
    queries is refused, and the ``encoder`` and ``dataset``, so the folder can be queried on its own
    (:class:`retrieval_kd.search.Retriever`); the sidecar's encoder and corpus keys are derived from them
    (:func:`retrieval_kd.index.sidecar.source_record`).
    """
    import faiss

    from retrieval_kd.index.sidecar import source_record
    from retrieval_kd.utils.fs import atomic_folder

    if len(doc_ids) != index.ntotal:
        raise ValueError(f"{len(doc_ids)} doc ids for an index of {index.ntotal} vectors")
    folder = Path(folder)
    with atomic_folder(folder, "dense-index", overwrite=overwrite) as tmp:
        faiss.write_index(index, str(tmp / "index.faiss"))
        (tmp / "docids.json").write_text(json.dumps(list(doc_ids)))
        sidecar = {**meta, **source_record(meta, folder, "dense"), "ntotal": int(index.ntotal), "dim": int(index.d), "doc_ids_sha256": doc_ids_digest(doc_ids),
                   "bytes_per_vector": bytes_per_vector(index), "faiss_class": type(faiss.downcast_index(index)).__name__}
        (tmp / _SIDECAR).write_text(json.dumps(sidecar, indent=1))
        if extra is not None:
            extra(tmp)
    return folder


def read_sidecar(folder: Path, name: str = _SIDECAR) -> dict:
    """An index folder's JSON sidecar; a missing, unreadable or non-object file is an error naming it."""
    from retrieval_kd.errors import IntegrityError

    path = folder / name
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder} is not an index folder (no {name}); build one with rkd index build") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError(f"{path}: not valid JSON ({exc}); rebuild the index") from None
    if not isinstance(value, (dict, list)):
        raise IntegrityError(f"{path}: expected a JSON object or list, got {type(value).__name__}; rebuild the index")
    return value


def doc_ids_digest(doc_ids) -> str:
    """sha256 of a doc-id list in order (the sidecar keeps it: a reordered or edited ``docids.json`` is caught)."""
    import hashlib

    return hashlib.sha256("\n".join(doc_ids).encode("utf-8")).hexdigest()


def read_doc_ids(path: Path, expected: int, digest: str | None = None) -> list[str]:
    """The doc-id list of an index folder, checked against the number of vectors it maps and, when the sidecar
    recorded it, against the digest of the list it was written with."""
    from retrieval_kd.errors import IntegrityError

    if not path.exists():
        raise IntegrityError(f"{path}: missing; the index folder is incomplete, rebuild it")
    ids = read_sidecar(path.parent, path.name)
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise IntegrityError(f"{path}: expected a JSON list of doc-id strings; rebuild the index")
    if len(ids) != expected:
        raise IntegrityError(f"{path}: {len(ids)} doc ids for an index of {expected} vectors (the files do not "
                             "belong together); rebuild the index")
    if len(set(ids)) != len(ids):
        raise IntegrityError(f"{path}: repeated doc ids; rebuild the index")
    if digest is not None and doc_ids_digest(ids) != digest:
        raise IntegrityError(f"{path}: not the doc-id list the index was written with (reordered or edited; "
                             f"its sha256 differs from {_SIDECAR}'s doc_ids_sha256); rebuild the index")
    return ids


def load_index(folder: str | os.PathLike):
    """``(index, doc_ids, meta)`` of an index folder, checked: the sidecar, FAISS file and doc ids agree."""
    import faiss

    from retrieval_kd.errors import IntegrityError
    from retrieval_kd.utils.fs import recover_folder

    folder = Path(folder)
    recover_folder(folder)  # a write killed between its two renames left the previous folder aside
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such index folder; build one with rkd index build")
    meta = read_sidecar(folder)
    if not isinstance(meta, dict):
        raise IntegrityError(f"{folder / _SIDECAR}: expected a JSON object; rebuild the index")
    if meta.get("type") in ("bm25", "sparse-inverted"):
        raise IntegrityError(f"{folder}: a {meta['type']} index, not a dense FAISS index; use rkd search "
                             f"{'bm25' if meta['type'] == 'bm25' else 'sparse'}")
    path = folder / "index.faiss"
    if not path.is_file():
        raise IntegrityError(f"{path}: missing; the index folder is incomplete, rebuild it")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else "unreadable"
        raise IntegrityError(f"{path}: not a readable FAISS index ({reason}); rebuild it") from None
    for key, actual in (("ntotal", index.ntotal), ("dim", index.d)):
        if key in meta and int(meta[key]) != int(actual):
            raise IntegrityError(f"{path}: holds {key}={actual} but {_SIDECAR} says {meta[key]} (the files do not "
                                 "belong together); rebuild the index")
    doc_ids = read_doc_ids(folder / "docids.json", index.ntotal, meta.get("doc_ids_sha256"))
    return index, doc_ids, meta


def corpus_identity(corpus) -> dict:
    """What an index records of the corpus it was built on: the key of the corpus file's bytes."""
    return {"corpus_key": corpus.store_path.name}


def check_corpus(meta: dict, corpus, folder: str | os.PathLike, doc_ids: list[str] | None = None) -> None:
    """Refuse to search ``folder`` with the queries of another corpus than the one the index was built on.

    An index that records its corpus (``corpus_key``) must match it exactly. One that does not (built from bare
    ``--embeddings``, or by an older version) is checked by its doc ids: none in the corpus is an error, some
    missing a warning.
    """
    from retrieval_kd.errors import IntegrityError

    key = meta.get("corpus_key")
    if key is not None:
        if key != corpus.store_path.name:
            raise IntegrityError(f"{folder}: built on another corpus ({meta.get('dataset') or key}) than "
                                 f"{corpus.path}; search it with its own dataset's queries, or rebuild it on this corpus")
        return
    if not doc_ids:
        return
    sample = doc_ids if len(doc_ids) <= 2000 else doc_ids[:: max(1, len(doc_ids) // 2000)]
    missing = [d for d in sample if d not in corpus]
    if len(missing) == len(sample):
        raise IntegrityError(f"{folder}: none of its doc ids (e.g. {missing[0]!r}) is in {corpus.path}; it was built "
                             "on another corpus")
    if missing:
        logger.warning("%s: %d of %d sampled doc ids (e.g. %r) are not in %s", folder, len(missing), len(sample),
                       missing[0], corpus.path)
