"""Inference-free learned sparse students (Geng et al. 2024), on sentence-transformers' SparseEncoder.

Document side: an MLM transformer and SPLADE pooling, max over tokens of log(1 + ReLU(logits)) (Formal et al.
2021), run once per document at indexing time. Query side: no model. A query is its tokens, each weighted by a
fixed vector over the vocabulary, so query latency is a tokenizer call plus an inverted-index lookup.

The two sides are one :class:`~sentence_transformers.SparseEncoder` with a ``Router`` (``SparseStaticEmbedding``
for queries, ``Transformer(fill-mask) + SpladePooling`` for documents), so the saved folder loads with
``SparseEncoder(path)`` and ``encode_query`` / ``encode_document`` work as for any sparse model.

IDF-aware penalty, as implemented here (Geng et al. 2024, "Towards Competitive Search Relevance For
Inference-Free Learned Sparse Retrievers", Sec. 3; OpenSearch's ``opensearch-neural-sparse-encoding-doc``
models ship the same ``idf.json`` query side). The matching function is

    s(q, d) = sum over tokens t of q:  idf(t) * w_d(t)

with ``w_d`` the document's SPLADE weights, and the FLOPS regulariser (Paria et al. 2020) acts on ``w_d`` alone:

    FLOPS = sum over vocabulary t of ( mean over the batch's documents of w_d(t) )^2

so a rare token (high IDF) gets a larger gradient from the ranking loss for the same penalty, and the penalty
stops crushing informative terms; frequent, low-IDF tokens are suppressed instead. The "plain FLOPS" baseline
is the same with binary query weights (``idf(t) = 1``). lambda_d rises quadratically from 0 over the first third
of training (SPLADE's warm-up, sentence-transformers' ``SpladeRegularizerWeightSchedulerCallback``).

References:
    Geng, Z., Ru, D., Yang, Y. "Towards Competitive Search Relevance For Inference-Free Learned Sparse
    Retrievers." arXiv:2411.04403, 2024.
    Paria, B. et al. "Minimizing FLOPs to Learn Efficient Sparse Representations." ICLR 2020.
    Formal, T. et al. "SPLADE v2: Sparse Lexical and Expansion Model for Information Retrieval." 2021.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from retrieval_kd.students.config import SparseTrainingConfig

logger = logging.getLogger(__name__)

#: regex of the query weights' parameter name (sentence-transformers' ``learning_rate_mapping`` key)
QUERY_WEIGHT_PATTERN = r"sub_modules\.query\.0\.weight"

__all__ = ["build_inference_free_model", "calibrate_teacher_scale", "flops", "idf_for", "prune_to_flops", "train_sparse"]


def flops(doc_weights, query_weights=None) -> float:
    """Expected multiplications per (query, document) pair, as Paria et al. 2020 / SPLADE report FLOPS.

    ``sum_t p_d(t) * p_q(t)`` with ``p(t)`` the fraction of documents (queries) in which token t is non-zero.
    Without queries it is the document-side FLOPS regulariser's discrete counterpart ``sum_t p_d(t)^2``.

    Args:
        doc_weights: ``(n_docs, vocab)`` scipy sparse matrix or array.
        query_weights: ``(n_queries, vocab)`` or None.
    """
    import scipy.sparse as sp

    def share(x):
        x = sp.csr_matrix(x)
        return np.asarray((x != 0).sum(axis=0)).ravel() / max(x.shape[0], 1)

    pd = share(doc_weights)
    pq = pd if query_weights is None else share(query_weights)
    return float(pd @ pq)


def prune_to_flops(doc_weights, query_weights, target: float, rtol: float = 0.005, max_iter: int = 60):
    """Drop document weights below one global threshold so that ``flops(docs, queries)`` comes down to ``target``.

    Static threshold pruning compares two sparse models at the same FLOPS without retraining either: the denser
    one is pruned to the sparser one's cost (the usual way learned sparse models are put on one efficiency
    budget). Bisection on the threshold over the documents' sorted weights; FLOPS falls as the threshold rises.

    Returns:
        ``(pruned CSR matrix, threshold, its FLOPS)``; the matrix is returned unchanged (threshold 0) when it is
        already at or below ``target``. Raises ValueError when ``target`` is not positive.
    """
    import scipy.sparse as sp

    if target <= 0:
        raise ValueError(f"target FLOPS must be positive, got {target}")
    docs = sp.csr_matrix(doc_weights, dtype=np.float32)
    docs.eliminate_zeros()
    current = flops(docs, query_weights)
    if current <= target * (1 + rtol):
        return docs, 0.0, current

    def pruned(threshold: float):
        out = docs.copy()
        out.data[out.data < threshold] = 0
        out.eliminate_zeros()
        return out

    values = np.unique(docs.data)
    lo, hi = 0, len(values) - 1          # flops(pruned(values[lo])) > target >= flops(pruned(values[hi]))
    best = None                          # (matrix, threshold, FLOPS) of the lowest threshold at or below target
    for _ in range(max_iter):
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        candidate = pruned(float(values[mid]))
        value = flops(candidate, query_weights)
        if value > target:
            lo = mid
        else:
            hi, best = mid, (candidate, float(values[mid]), value)
            if value >= target * (1 - rtol):
                break
    if best is None:
        top = pruned(float(values[hi]))
        best = (top, float(values[hi]), flops(top, query_weights))
    return best


def idf_for(config: SparseTrainingConfig, collection, tokenizer) -> dict[str, float]:
    """The IDF file of ``config`` (computed over the collection's corpus in one pass and saved when missing)."""
    from retrieval_kd.students.idf import compute_idf, load_idf, save_idf

    path = Path(config.idf_file) if config.idf_file else Path(config.output_dir).with_name(
        f"{Path(config.output_dir).name}-idf.json")
    if path.exists():
        return load_idf(path)
    texts = (t for chunk in _chunks(collection.corpus.ids, 2048) for t in collection.corpus.texts(chunk))
    idf = compute_idf(texts, tokenizer, max_length=config.max_seq_length)
    save_idf(idf, path)
    logger.info("IDF of %d tokens saved to %s", len(idf), path)
    return idf


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def build_inference_free_model(doc_model: str, idf: dict[str, float] | None, max_seq_length: int = 256,
                               query_max_length: int = 64, idf_aware: bool = True, device: str | None = None,
                               train_query_weights: bool = False):
    """A SparseEncoder: queries = tokens x IDF (or x 1, ``idf_aware=False``); documents = SPLADE.

    The query weights are frozen unless ``train_query_weights`` (then they start from IDF and are a parameter,
    ``QUERY_WEIGHT_PATTERN`` names them for a learning rate of their own)."""
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Router
    from sentence_transformers.sentence_transformer.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding, SpladePooling

    doc = Transformer(doc_model, max_seq_length=max_seq_length, transformer_task="fill-mask")
    tokenizer = doc.tokenizer
    if idf_aware:
        if idf is None:
            raise ValueError("idf_aware=True needs IDF weights")
        from retrieval_kd.students.idf import idf_vector

        weight = torch.tensor(idf_vector(idf, tokenizer))
    else:
        weight = torch.ones(len(tokenizer.get_vocab()))
    query = SparseStaticEmbedding(tokenizer=tokenizer, weight=weight, frozen=not train_query_weights)
    query.max_seq_length = query_max_length
    router = Router.for_query_document(query_modules=[query],
                                       document_modules=[doc, SpladePooling(pooling_strategy="max",
                                                                            activation_function="relu")])
    return SparseEncoder(modules=[router], device=device, similarity_fn_name="dot")


def calibrate_teacher_scale(model, dataset, n_pairs: int = 128, seed: int = 0) -> float:
    """``std(student margins) / std(teacher margins)`` over a sample of training pairs (untrained student)."""
    import torch

    rng = np.random.default_rng(seed)
    rows = dataset.select(sorted(rng.choice(dataset.num_rows, min(n_pairs, dataset.num_rows), replace=False)))
    with torch.no_grad():
        q = model.encode_query(list(rows["query"]), convert_to_tensor=True).to_dense()
        p = model.encode_document(list(rows["positive"]), convert_to_tensor=True).to_dense()
        n = model.encode_document(list(rows["negative"]), convert_to_tensor=True).to_dense()
    student = ((q * p).sum(1) - (q * n).sum(1)).cpu().numpy()
    teacher = np.asarray(rows["score_positive"]) - np.asarray(rows["score_negative"])
    if teacher.std() <= 1e-12:
        raise ValueError("the teacher's margins do not vary on the calibration sample; check the score store")
    scale = float(student.std() / teacher.std())
    logger.info("teacher scale calibrated on %d pairs: x%.3f (student margin std %.3f, teacher %.3f)",
                len(teacher), scale, student.std(), teacher.std())
    return scale


def train_sparse(config: SparseTrainingConfig, collection=None, callbacks=None, overwrite: bool = False) -> dict[str, Any]:
    """Train the inference-free student that ``config`` describes; save a SparseEncoder folder to ``output_dir``.

    ``output_dir`` is replaced only when retrieval-kd wrote it as a sparse student, unless ``overwrite`` (checked
    before training starts)."""
    from sentence_transformers.sparse_encoder.callbacks.splade_callbacks import SpladeRegularizerWeightSchedulerCallback
    from sentence_transformers.sparse_encoder.losses import SparseDistillKLDivLoss, SparseMarginMSELoss, SpladeLoss
    from sentence_transformers.sparse_encoder.trainer import SparseEncoderTrainer
    from sentence_transformers.sparse_encoder.training_args import SparseEncoderTrainingArguments

    from retrieval_kd.models.resolve import resolve_model
    from retrieval_kd.students.data import DistillationCollator
    from retrieval_kd.students.dense import (
        _save,
        cpu_precision,
        last_dev_metrics,
        prepare_training_data,
        resume_point,
        train_from,
        training_precision,
    )
    from retrieval_kd.students.fused_splade import fused_splade_pooling
    from retrieval_kd.students.interpolate import apply_start_weight, snapshot, start_reference
    from retrieval_kd.utils.fs import check_output_folder

    check_output_folder(config.output_dir, "sparse-student", overwrite)
    resolve_model(config.model, "student model")  # before the training data is prepared
    t0 = time.perf_counter()
    data = prepare_training_data(config, collection)
    idf = None
    if config.loss.idf_aware:
        from transformers import AutoTokenizer

        idf = idf_for(config, data.collection, AutoTokenizer.from_pretrained(config.model))
    trainable = config.query_learning_rate is not None
    model = build_inference_free_model(config.model, idf, config.train_max_length or config.max_seq_length,
                                       config.query_max_length, idf_aware=config.loss.idf_aware,
                                       train_query_weights=trainable)
    start = snapshot(model) if config.start_weight else None
    scale = 1.0
    if config.loss.calibrate_scale:
        scale = calibrate_teacher_scale(model, data.dataset, config.loss.calibration_pairs,
                                        int(config.training.get("seed", 42)))
        data.dataset = data.dataset.map(lambda r: {"score_positive": r["score_positive"] * scale,
                                                   "score_negative": r["score_negative"] * scale})
    main = SparseMarginMSELoss(model) if config.loss.name == "margin-mse" else \
        SparseDistillKLDivLoss(model, temperature=config.loss.kl_temperature)
    loss = SpladeLoss(model, main, document_regularizer_weight=config.loss.document_regularizer_weight,
                      query_regularizer_weight=None)
    extra = {"learning_rate_mapping": {QUERY_WEIGHT_PATTERN: config.query_learning_rate}} if trainable else {}
    args = config.training_arguments(data.sampler, args_class=SparseEncoderTrainingArguments,
                                     router_mapping={"query": "query", "positive": "document",
                                                     "negative": "document"}, **extra, **cpu_precision(config))
    scheduler = SpladeRegularizerWeightSchedulerCallback(loss=loss, warmup_ratio=config.loss.regularizer_warmup)
    model.model_card_data.model_name = f"{config.name}: inference-free sparse student on {data.collection.name}"
    trainer = SparseEncoderTrainer(model=model, args=args, train_dataset=data.dataset, loss=loss,
                                   callbacks=[scheduler, *(callbacks or [])])
    trainer.data_collator = DistillationCollator(trainer.data_collator, "scores")
    document = model[0].sub_modules["document"]
    with fused_splade_pooling(document[0], document[1]) as fused:
        result = train_from(trainer, resume_point(config))
    document[0].max_seq_length = config.max_seq_length
    apply_start_weight(model, start, config.start_weight)
    summary = {
        "name": config.name, "output_dir": str(config.output_dir), "teacher": data.fingerprint,
        "train_queries": len(data.train_q), "dev_queries": len(data.dev_q), "pairs": data.dataset.num_rows,
        "steps": trainer.state.global_step, "train_loss": float(result.training_loss),
        "train_seconds": round(time.perf_counter() - t0, 1), "dev": last_dev_metrics(trainer),
        "idf_aware": config.loss.idf_aware, "teacher_scale": config.data.teacher_scale * scale,
        "precision": training_precision(args), "fused_pooling": fused, "start_weight": config.start_weight,
        "start": start_reference(config.model),
        "log_history": trainer.state.log_history,
    }
    if trainer.is_world_process_zero():
        _save(model, config, summary, data.clusters, _card_section(config, summary), kind="sparse-student",
              overwrite=overwrite)
    return summary


def _card_section(config: SparseTrainingConfig, summary: dict) -> str:
    penalty = ("IDF-aware FLOPS (query weights = IDF in the matching function, FLOPS on document weights; "
               "Geng et al. 2024)" if config.loss.idf_aware else "plain FLOPS (binary query weights)")
    return "\n".join([
        "\n\n## Inference-free sparse distillation (retrieval-kd)\n",
        f"- Document encoder: `{config.model}` (SPLADE max pooling of log(1 + ReLU(MLM logits)))",
        "- Query side: tokenizer + static token weights, no model inference",
        f"- Teacher: `{summary['teacher']}` from `{config.data.store}`; loss {config.loss.name}",
        f"- Regulariser: {penalty}, lambda_d {config.loss.document_regularizer_weight} after a quadratic warm-up "
        f"over {config.loss.regularizer_warmup:.2f} of the steps",
        f"- Data: `{config.data.dataset}` `{config.data.split}`, {summary['train_queries']} queries, "
        f"{summary['pairs']} pairs; {summary['steps']} steps in {summary['train_seconds']} s",
        *([f"- Saved weights: {config.start_weight} x the starting model + {1 - config.start_weight:g} x the "
           "trained one (WiSE-FT, Wortsman et al. 2022)"] if config.start_weight else []),
    ]) + "\n"
