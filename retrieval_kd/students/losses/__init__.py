"""Distillation losses for dense students.

sentence-transformers already has three of the four: :class:`MarginMSELoss` (Hofstaetter et al. 2020),
:class:`DistillKLDivLoss` (listwise KL over n-tuples, teacher softmax vs student softmax with temperatures) and
:class:`MultipleNegativesRankingLoss` (the no-teacher in-batch contrastive baseline); they are used as they are.
What it lacks is TAS-B's dual teacher (pairwise plus in-batch teacher scores): :class:`DualTeacherLoss`.
"""

from __future__ import annotations

from sentence_transformers.sentence_transformer.losses import (
    DistillKLDivLoss,
    MarginMSELoss,
    MultipleNegativesRankingLoss,
)

from retrieval_kd.students.losses.dual_teacher import DualTeacherLoss, inbatch_hard, inbatch_kl

__all__ = ["DistillKLDivLoss", "DualTeacherLoss", "MarginMSELoss", "MultipleNegativesRankingLoss", "LOSSES",
           "build_loss", "inbatch_hard", "inbatch_kl"]

#: loss name -> what the collator puts in ``label`` for it
LOSSES = {"margin-mse": "scores", "kl": "scores", "dual": "dual", "mnrl": None}


def build_loss(name: str, model, kl_temperature: float = 1.0, inbatch_weight: float = 1.0,
               inbatch_temperature: float = 0.05, mnrl_scale: float = 20.0,
               inbatch_teacher_temperature: float | None = None, label_weight: float = 0.0):
    """A loss by its config name: ``margin-mse``, ``kl``, ``dual`` or ``mnrl``."""
    if name == "margin-mse":
        return MarginMSELoss(model)
    if name == "kl":
        return DistillKLDivLoss(model, temperature=kl_temperature)
    if name == "dual":
        return DualTeacherLoss(model, inbatch_weight=inbatch_weight, student_temperature=inbatch_temperature,
                               teacher_temperature=inbatch_teacher_temperature or inbatch_temperature,
                               label_weight=label_weight)
    if name == "mnrl":
        return MultipleNegativesRankingLoss(model, scale=mnrl_scale)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
