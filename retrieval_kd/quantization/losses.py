"""Distillation losses for vector quantisation (Distill-VQ).

:class:`ListwiseDistillLoss` is the ListNet / KL objective of Distill-VQ: over each query's candidate list,
``KL(softmax(s_teacher / T) || softmax(s_student / T))``. :class:`MarginMSEDistillLoss` is the pairwise option:
the mean over candidate pairs (first candidate, each other) of ``((s_s0 - s_sj) - (s_t0 - s_tj))^2``, as
Hofstaetter et al. (2020) define Margin-MSE. Both take ``(nq, n_candidates)`` score matrices, so any teacher's
scores (dense inner products, or a score store's cross-encoder scores) plug in; a mask marks padding.

References:
    Xiao, S., Liu, Z., Han, W., Zhang, J., Shao, Y., Lian, D., Li, C., Sun, H., Deng, D., Zhang, L., Zhang, Q.,
    Xie, X. (2022). Distill-VQ: Learning Retrieval Oriented Vector Quantization By Distilling Knowledge from
    Dense Embeddings. SIGIR.
    Cao, Z., Qin, T., Liu, T.-Y., Tsai, M.-F., Li, H. (2007). Learning to Rank: From Pairwise Approach to Listwise
    Approach (ListNet). ICML.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ListwiseDistillLoss", "MarginMSEDistillLoss"]


def _check(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(
            f"student scores {tuple(student.shape)} and teacher scores {tuple(teacher.shape)} must both be "
            "(n_queries, n_candidates); score the same candidates with both"
        )


class ListwiseDistillLoss(nn.Module):
    """KL divergence from the teacher's to the student's softmax over each candidate list (ListNet).

    Args:
        temperature: divides both teachers' and students' scores before the softmax.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check(student, teacher)
        s, t = student / self.temperature, teacher / self.temperature
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
            t = t.masked_fill(~mask, float("-inf"))
        p_t = torch.softmax(t, dim=-1)
        log_p_t = torch.log_softmax(t, dim=-1)
        log_p_s = torch.log_softmax(s, dim=-1)
        terms = p_t * (log_p_t - log_p_s)
        if mask is not None:
            terms = terms.masked_fill(~mask, 0.0)
        return terms.sum(-1).mean()

    @property
    def citation(self) -> str:
        return "Xiao et al. 2022, Distill-VQ (SIGIR); Cao et al. 2007, ListNet (ICML)"


class MarginMSEDistillLoss(nn.Module):
    """Margin-MSE between the first candidate and each other candidate of a list."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check(student, teacher)
        ds = student[:, :1] - student[:, 1:]
        dt = teacher[:, :1] - teacher[:, 1:]
        err = (ds - dt) ** 2
        if mask is not None:
            m = mask[:, 1:] & mask[:, :1]
            return (err * m).sum() / m.sum().clamp(min=1)
        return err.mean()

    @property
    def citation(self) -> str:
        return "Hofstaetter et al. 2020, Improving Efficient Neural Ranking Models with Cross-Architecture KD"
