"""TAS-B's dual teacher: a pairwise Margin-MSE term plus a KL term over the batch's passages scored by a teacher."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from sentence_transformers.sentence_transformer.losses import MarginMSELoss
from torch import Tensor, nn

__all__ = ["DualTeacherLoss", "inbatch_hard", "inbatch_kl"]


def _inbatch_logits(query: Tensor, docs: Tensor, teacher_scores: Tensor, student_temperature: float) -> Tensor:
    """The student's in-batch logits ``q . d / t_s``, the pairs the teacher left out (``-inf``) at ``-1e4``."""
    masked = torch.isneginf(teacher_scores)
    logits = query @ docs.T / student_temperature
    if masked.any():
        logits = logits.masked_fill(masked, -1e4)   # finite: exp() is 0, and 0 * logit stays 0 in the KL
    return logits


def inbatch_kl(query: Tensor, docs: Tensor, teacher_scores: Tensor, student_temperature: float,
               teacher_temperature: float) -> Tensor:
    """Mean over queries of KL(softmax(teacher / t_t) || softmax(q . d / t_s)) over all of the batch's docs.

    Args:
        query: ``(B, dim)`` query embeddings.
        docs: ``(N, dim)`` embeddings of the batch's passages (positives, then negatives).
        teacher_scores: ``(B, N)`` the in-batch teacher's score of each (query, passage); ``-inf`` leaves the
            pair out of both distributions (e.g. a made-up query's own source, :attr:`DataConfig.exclude_source`).
    """
    teacher_scores = teacher_scores.detach()
    student = torch.log_softmax(_inbatch_logits(query, docs, teacher_scores, student_temperature), dim=1)
    teacher = torch.softmax(teacher_scores / teacher_temperature, dim=1)
    return nn.functional.kl_div(student, teacher, reduction="batchmean")


def inbatch_hard(query: Tensor, docs: Tensor, teacher_scores: Tensor, student_temperature: float) -> Tensor:
    """Hinton's hard-target term: cross-entropy of each query's own positive (column ``i`` of ``docs``) against
    every other passage of the batch, the pairs the teacher left out excluded (MultipleNegativesRanking with
    the batch's hard negatives, scale ``1 / t_s``)."""
    logits = _inbatch_logits(query, docs, teacher_scores.detach(), student_temperature)
    return nn.functional.cross_entropy(logits, torch.arange(query.shape[0], device=query.device))


class DualTeacherLoss(nn.Module):
    """Pairwise Margin-MSE from one teacher plus in-batch KL from another, as in TAS-Balanced.

    ``loss = MarginMSE(student margins, pairwise teacher margins) + lambda * KL_inbatch + alpha * CE_hard``. The in-batch term
    scores each query against every positive and negative of the batch (``2B`` passages), with teacher scores
    for exactly those pairs put in the labels by the collator (:class:`retrieval_kd.students.data.DistillationCollator`):
    either the pairwise teacher's own stored scores, a passage it never scored for the query counting as that
    query's lowest score (:class:`~retrieval_kd.students.data.StoredInBatchTeacher`), or a second bi-encoder
    teacher's cached embeddings (:class:`~retrieval_kd.students.data.InBatchTeacher`, TAS-B's design with
    ColBERT). TAS-B weighs pairwise and in-batch Margin-MSE; here the in-batch term is a softmax KL, which
    compares whole in-batch distributions. ``alpha`` (``label_weight``, default 0) adds Hinton et al.'s hard-target
    term: the cross-entropy of each query's positive (a judged one, or the teacher's pick on made-up queries)
    against the batch's other passages, i.e. MultipleNegativesRanking beside the soft targets.

    Labels: ``(B, 2 + 2B)``: the pairwise teacher's ``[score_positive, score_negative]`` then the in-batch
    teacher's scores of the query against ``[pos_1..pos_B, neg_1..neg_B]``.

    Args:
        model: the SentenceTransformer student.
        inbatch_weight: lambda.
        student_temperature: temperature of the student's in-batch softmax (its scores are cosines).
        teacher_temperature: temperature of the in-batch teacher's softmax.
        label_weight: alpha, the weight of the hard-target term (0: none).

    References:
        Hofstaetter, Lin, Yang, Lin, Hanbury. "Efficiently Teaching an Effective Dense Retriever with Balanced
        Topic Aware Sampling." SIGIR 2021. https://arxiv.org/abs/2104.06967
        Hofstaetter, Althammer, Schroeder, Sertkan, Hanbury. "Improving Efficient Neural Ranking Models with
        Cross-Architecture Knowledge Distillation." 2020. https://arxiv.org/abs/2010.02666
        Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network." 2015. https://arxiv.org/abs/1503.02531
    """

    def __init__(self, model, inbatch_weight: float = 1.0, student_temperature: float = 0.05,
                 teacher_temperature: float = 0.05, label_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.pairwise = MarginMSELoss(model)
        self.inbatch_weight = inbatch_weight
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.label_weight = label_weight

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        embeddings = [self.model(features)["sentence_embedding"] for features in sentence_features]
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        if len(embeddings) != 3:
            raise ValueError(f"DualTeacherLoss expects (query, positive, negative) columns, got {len(embeddings)}")
        query, pos, neg = embeddings
        batch = query.shape[0]
        if labels.shape != (batch, 2 + 2 * batch):
            raise ValueError(
                f"Labels shape {tuple(labels.shape)} does not match expected {(batch, 2 + 2 * batch)}: pairwise "
                "[score_positive, score_negative] followed by the in-batch teacher's scores of every batch passage. "
                "Train with retrieval_kd.students.data.DistillationCollator(inbatch_teacher=...)"
            )
        pairwise = self.pairwise.compute_loss_from_embeddings([query, pos, neg], labels[:, :2])
        docs = torch.cat([pos, neg])
        loss = pairwise + self.inbatch_weight * inbatch_kl(query, docs, labels[:, 2:], self.student_temperature,
                                                           self.teacher_temperature)
        if self.label_weight:
            loss = loss + self.label_weight * inbatch_hard(query, docs, labels[:, 2:], self.student_temperature)
        return loss

    def get_config_dict(self) -> dict[str, Any]:
        return {"inbatch_weight": self.inbatch_weight, "student_temperature": self.student_temperature,
                "teacher_temperature": self.teacher_temperature, "label_weight": self.label_weight}

    @property
    def citation(self) -> str:
        return """
@inproceedings{hofstaetter2021tasb,
    title = {Efficiently Teaching an Effective Dense Retriever with Balanced Topic Aware Sampling},
    author = {Hofst{\\"a}tter, Sebastian and Lin, Sheng-Chieh and Yang, Jheng-Hong and Lin, Jimmy and Hanbury, Allan},
    booktitle = {SIGIR},
    year = {2021},
}
"""
