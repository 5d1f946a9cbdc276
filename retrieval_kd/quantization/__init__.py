"""Vector quantisation learned by distillation (Distill-VQ): a torch IVF-PQ that FAISS reproduces exactly."""

from __future__ import annotations

from retrieval_kd.quantization.distill_vq import DistillVQConfig, DistillVQResult, exact_topk, train_distill_vq
from retrieval_kd.quantization.learnable_ivfpq import LearnableIVFPQ
from retrieval_kd.quantization.losses import ListwiseDistillLoss, MarginMSEDistillLoss

__all__ = [
    "DistillVQConfig",
    "DistillVQResult",
    "LearnableIVFPQ",
    "ListwiseDistillLoss",
    "MarginMSEDistillLoss",
    "exact_topk",
    "train_distill_vq",
]
