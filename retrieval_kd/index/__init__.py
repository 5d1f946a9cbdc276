"""ANN indexes: FAISS baselines and the export of learned (Distill-VQ) indexes, saved with a JSON sidecar."""

from __future__ import annotations

from retrieval_kd.index.faiss_export import export_faiss, to_gpu

__all__ = ["export_faiss", "to_gpu"]
