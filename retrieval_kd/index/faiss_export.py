"""Export a :class:`~retrieval_kd.quantization.LearnableIVFPQ` to ordinary FAISS indexes.

* ``IndexIVFPQ`` (inner product, residual encoding): an ``IndexFlatIP`` coarse quantizer holding the learned
  centroids, the learned PQ codebooks, and each vector's (list, code) stored through ``add_sa_codes`` exactly as
  the torch module computed them;
* ``IndexPQ`` (``nlist=0``);
* the OPQ chain: ``IndexPreTransform(OPQMatrix, IndexIVFPQ)``, the same structure ``index_factory("OPQm,IVFn,PQm")``
  builds, with the learned rotation as the OPQ matrix.

The result is a plain FAISS index: ``faiss.write_index`` / ``faiss.read_index`` and any FAISS user can load it, and
FAISS's own ``add`` of new vectors encodes them by the same rules the module uses.
:func:`to_gpu` moves an index to a GPU with faiss-gpu, and says loudly (a warning, and ``None`` back) when the
index type cannot run there.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from retrieval_kd.index.dense import inner_index
from retrieval_kd.quantization.learnable_ivfpq import LearnableIVFPQ

logger = logging.getLogger(__name__)

__all__ = ["export_faiss", "sa_codes", "to_gpu", "GPU_UNSUPPORTED"]

#: index types FAISS does not run on GPU (index_cpu_to_gpu raises for them); searched on CPU instead.
GPU_UNSUPPORTED = ("IndexHNSWFlat", "IndexHNSW", "IndexPQ")


def sa_codes(module: LearnableIVFPQ, lists: np.ndarray, codes: np.ndarray, coarse_code_size: int) -> np.ndarray:
    """FAISS standalone codes: the list number (little endian, ``coarse_code_size`` bytes) then the PQ code."""
    if module.nbits != 8:
        raise ValueError("export writes byte-aligned PQ codes (nbits=8)")
    n = codes.shape[0]
    out = np.zeros((n, coarse_code_size + module.m), dtype=np.uint8)
    lists = lists.astype(np.int64)
    for b in range(coarse_code_size):
        out[:, b] = (lists >> (8 * b)) & 0xFF
    out[:, coarse_code_size:] = codes.astype(np.uint8)
    return out


def export_faiss(module: LearnableIVFPQ, vectors: np.ndarray | None = None, lists: np.ndarray | None = None,
                 codes: np.ndarray | None = None):
    """Build the FAISS index of a learned module holding ``vectors`` (or their precomputed lists and codes).

    Row ``i`` of ``vectors`` gets FAISS id ``i``.
    """
    import faiss

    d, m, nbits = module.dim, module.m, module.nbits
    if codes is None:
        if vectors is None:
            raise ValueError("give the vectors, or their lists and codes")
        t_lists, t_codes = module.encode(torch.as_tensor(np.asarray(vectors, dtype=np.float32)))
        lists, codes = t_lists.numpy(), t_codes.numpy()
    with torch.no_grad():
        books = module.codebooks.detach().cpu().numpy().astype(np.float32)
        centroids = module.centroids.detach().cpu().numpy().astype(np.float32)
    if module.nlist:
        quantizer = faiss.IndexFlatIP(d) if module.metric == "ip" else faiss.IndexFlatL2(d)
        quantizer.add(centroids)
        metric = faiss.METRIC_INNER_PRODUCT if module.metric == "ip" else faiss.METRIC_L2
        index = faiss.IndexIVFPQ(quantizer, d, module.nlist, m, nbits, metric)
        index.own_fields = True
        quantizer.this.disown()
        index.by_residual = True
        faiss.copy_array_to_vector(books.ravel(), index.pq.centroids)
        index.is_trained = True
        # the ids need a name of their own: FAISS < 1.15's add_sa_codes wrapper drops its only reference to a
        # temporary array before reading it, and stores whatever the freed memory holds (seen with 1.14.1)
        ids = np.arange(len(codes), dtype=np.int64)
        index.add_sa_codes(sa_codes(module, lists, codes, index.coarse_code_size()), ids)
    else:
        index = faiss.IndexPQ(d, m, nbits, faiss.METRIC_INNER_PRODUCT)
        faiss.copy_array_to_vector(books.ravel(), index.pq.centroids)
        index.is_trained = True
        index.add_sa_codes(np.ascontiguousarray(codes.astype(np.uint8)))
    if module.use_opq:
        opq = faiss.OPQMatrix(d, m)
        a = module.rotation_matrix().detach().cpu().numpy().astype(np.float32)
        faiss.copy_array_to_vector(a.ravel(), opq.A)
        faiss.copy_array_to_vector(np.zeros(d, dtype=np.float32), opq.b)
        opq.have_bias = False
        opq.is_trained = True
        chain = faiss.IndexPreTransform(opq, index)
        chain.own_fields = True
        index.this.disown()
        opq.this.disown()
        index = chain
    return index


def to_gpu(index, device: int = 0, strict: bool = False):
    """``faiss.index_cpu_to_gpu`` when faiss-gpu and a GPU exist; otherwise ``None`` and a warning saying why.

    ``strict=True`` raises instead of warning.
    """
    import faiss

    def refuse(reason: str):
        if strict:
            raise RuntimeError(reason)
        logger.warning("%s; searching on CPU", reason)
        return None

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return refuse("no GPU FAISS here (faiss-gpu not installed or no GPU visible)")
    name = type(inner_index(index)).__name__
    if name in GPU_UNSUPPORTED:
        return refuse(f"FAISS has no GPU implementation of {name}")
    res = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    options.useFloat16LookupTables = False  # exact lookups, same results as CPU
    gpu_index = faiss.index_cpu_to_gpu(res, device, index, options)
    # keep the resources alive as long as the index; FAISS >= 1.15 refuses unknown attributes on its SWIG objects,
    # referenced_objects is the one it keeps for this purpose
    gpu_index.referenced_objects = [*(getattr(gpu_index, "referenced_objects", None) or []), res]
    return gpu_index
