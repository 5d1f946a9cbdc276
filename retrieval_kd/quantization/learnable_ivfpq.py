"""A learnable IVF-PQ index in torch, initialised from FAISS and exactly reproducible by FAISS.

The parameters are the IVF centroids ``C`` (nlist x d), the PQ codebooks ``B`` (M x ksub x d/M) and, optionally,
an OPQ rotation ``R`` (d x d, kept orthogonal by torch's orthogonal parametrisation). Encoding follows FAISS's
rules exactly, so an exported index assigns and scores every vector as this module does:

* rotate (OPQ): ``x' = x R^T`` (FAISS ``LinearTransform.apply``: ``y = A x``);
* coarse assignment: the centroid of largest inner product (the ``IndexFlatIP`` quantizer of an
  inner-product ``IndexIVFPQ``) or of smallest L2 distance for the L2 metric;
* residual ``r = x' - C[a]``; PQ code per sub-vector: the nearest codeword in L2 (``ProductQuantizer``);
* reconstruction ``x_hat = C[a] + concat_m B[m, code_m]``; score ``q' . x_hat`` (``IndexIVFPQ``, inner product).

Codes are hard assignments; gradients reach the selected codewords and centroids through the reconstruction
(the straight-through treatment of Distill-VQ, Xiao et al. 2022).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["LearnableIVFPQ"]


class LearnableIVFPQ(nn.Module):
    """IVF-PQ (or PQ alone with ``nlist=0``), with an optional OPQ rotation.

    Args:
        dim: vector dimension.
        nlist: number of IVF lists; 0 for a flat PQ (``IndexPQ``).
        m: number of sub-quantizers (bytes per vector at 8 bits).
        nbits: bits per sub-quantizer code (8 is what FAISS's CPU and GPU IVFPQ both support best).
        opq: learn an orthogonal rotation before IVF-PQ (the ``OPQm,IVFn,PQm`` chain).
        metric: ``ip`` (inner product) or ``l2`` for the coarse assignment.
    """

    def __init__(self, dim: int, nlist: int, m: int, nbits: int = 8, opq: bool = False, metric: str = "ip"):
        super().__init__()
        if dim % m:
            raise ValueError(f"dimension {dim} is not divisible by the {m} sub-quantizers")
        if metric not in ("ip", "l2"):
            raise ValueError("metric is 'ip' or 'l2'")
        self.dim, self.nlist, self.m, self.nbits, self.metric = dim, nlist, m, nbits, metric
        self.ksub, self.dsub = 1 << nbits, dim // m
        self.centroids = nn.Parameter(torch.zeros(max(nlist, 1), dim), requires_grad=nlist > 0)
        self.codebooks = nn.Parameter(torch.zeros(m, self.ksub, self.dsub))
        self.use_opq = opq
        if opq:
            self.rotation = nn.Linear(dim, dim, bias=False)
            nn.utils.parametrizations.orthogonal(self.rotation, "weight")

    # -- initialisation from FAISS -------------------------------------------------------------------------------
    @classmethod
    def from_faiss_training(cls, x: np.ndarray, nlist: int, m: int, nbits: int = 8, opq: bool = False,
                            metric: str = "ip", seed: int = 123, niter: int = 25) -> LearnableIVFPQ:
        """Initialise as FAISS trains an index on ``x``: OPQ, then k-means centroids, then PQ on residuals."""
        import faiss

        x = np.ascontiguousarray(x, dtype=np.float32)
        dim = x.shape[1]
        module = cls(dim, nlist, m, nbits, opq, metric)
        xt = x
        if opq:
            opq_matrix = faiss.OPQMatrix(dim, m)
            opq_matrix.niter = niter
            opq_matrix.train(x)
            a = faiss.vector_to_array(opq_matrix.A).reshape(dim, dim)
            module.set_rotation(a)
            xt = opq_matrix.apply(x)
        if nlist > 0:
            km = faiss.Kmeans(dim, nlist, niter=niter, seed=seed, spherical=False, verbose=False)
            km.train(xt)
            with torch.no_grad():
                module.centroids.copy_(torch.from_numpy(km.centroids))
            residual = xt - km.centroids[module._assign_np(xt, km.centroids)]
        else:
            residual = xt
        pq = faiss.ProductQuantizer(dim, m, nbits)
        pq.cp.seed = seed
        pq.train(np.ascontiguousarray(residual, dtype=np.float32))
        with torch.no_grad():
            module.codebooks.copy_(torch.from_numpy(faiss.vector_to_array(pq.centroids).reshape(m, 1 << nbits, dim // m)))
        return module

    def _assign_np(self, x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
        if self.metric == "ip":
            return np.argmax(x @ centroids.T, axis=1)
        d2 = (x ** 2).sum(1, keepdims=True) - 2 * x @ centroids.T + (centroids ** 2).sum(1)
        return np.argmin(d2, axis=1)

    def set_rotation(self, a: np.ndarray) -> None:
        """Set the OPQ rotation from FAISS's matrix A (``y = A x``)."""
        with torch.no_grad():
            self.rotation.weight = torch.as_tensor(a, dtype=torch.float32)

    def rotation_matrix(self) -> torch.Tensor | None:
        return self.rotation.weight if self.use_opq else None

    # -- encoding ----------------------------------------------------------------------------------------------
    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        return self.rotation(x) if self.use_opq else x

    def assign(self, xr: torch.Tensor) -> torch.Tensor:
        """Coarse list of each (rotated) vector, as FAISS's quantizer assigns it."""
        if self.nlist == 0:
            return torch.zeros(xr.shape[0], dtype=torch.long, device=xr.device)
        c = self.centroids
        if self.metric == "ip":
            return (xr @ c.T).argmax(dim=1)
        return torch.cdist(xr, c).argmin(dim=1)

    def pq_codes(self, residual: torch.Tensor) -> torch.Tensor:
        """Nearest codeword (L2) per sub-vector: ``(n, m)`` codes."""
        sub = residual.reshape(residual.shape[0], self.m, self.dsub)
        books = self.codebooks
        # ||r - b||^2 = ||r||^2 - 2 r.b + ||b||^2; ||r||^2 does not change the argmin
        d2 = (books ** 2).sum(-1).unsqueeze(0) - 2 * torch.einsum("nmd,mkd->nmk", sub, books)
        return d2.argmin(dim=-1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lists, codes)`` of vectors under the current parameters (what FAISS ``add`` would store)."""
        n = x.shape[0]
        # results go into preallocated outputs: keeping many small per-batch tensors alive between large
        # temporaries fragments the heap (seen: +19 GB for 1M vectors)
        lists = torch.empty(n, dtype=torch.long)
        codes = torch.empty((n, self.m), dtype=torch.long)
        for i in range(0, n, batch_size):
            xr = self.rotate(x[i:i + batch_size])
            a = self.assign(xr)
            residual = xr - self.centroids[a] if self.nlist else xr
            lists[i:i + batch_size] = a
            codes[i:i + batch_size] = self.pq_codes(residual)
        return lists, codes

    def reconstruct(self, lists: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """``C[a] + concat_m B[m, code_m]``, differentiable in C and B (hard assignments)."""
        parts = self.codebooks[torch.arange(self.m, device=codes.device).unsqueeze(0), codes]  # (n, m, dsub)
        recon = parts.reshape(codes.shape[0], self.dim)
        return recon + self.centroids[lists] if self.nlist else recon

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hard-assign then reconstruct (gradients reach the selected codewords, centroids and the rotation)."""
        xr = self.rotate(x)
        with torch.no_grad():
            a = self.assign(xr)
            codes = self.pq_codes(xr - self.centroids[a] if self.nlist else xr)
        return self.reconstruct(a, codes), a, codes

    def score(self, q: torch.Tensor, lists: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Inner-product scores ``(nq, n)`` of rotated queries against stored codes (what FAISS returns)."""
        return self.rotate(q) @ self.reconstruct(lists, codes).T

    @torch.no_grad()
    def search(self, q: torch.Tensor, lists: torch.Tensor, codes: torch.Tensor, k: int,
               nprobe: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k over stored codes, visiting the ``nprobe`` best lists per query (all lists if None)."""
        scores = self.score(q, lists, codes)
        if self.nlist and nprobe is not None and nprobe < self.nlist:
            qr = self.rotate(q)
            coarse = qr @ self.centroids.T if self.metric == "ip" else -torch.cdist(qr, self.centroids)
            probe = coarse.topk(nprobe, dim=1).indices  # (nq, nprobe)
            visited = (lists.unsqueeze(0).unsqueeze(-1) == probe.unsqueeze(1)).any(-1)
            scores = scores.masked_fill(~visited, float("-inf"))
        k = min(k, scores.shape[1])
        return scores.topk(k, dim=1)

    @property
    def bytes_per_vector(self) -> int:
        """Code size: m sub-quantizer codes of nbits each (list ids are implicit in an IVF's inverted lists)."""
        return (self.m * self.nbits + 7) // 8
