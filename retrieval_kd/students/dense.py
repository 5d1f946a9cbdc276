"""Train a dense bi-encoder student from stored teacher scores, on sentence-transformers' trainer.

The flow: teacher scores (score store, ``rkd teach``) -> teacher-scored pairs (:mod:`retrieval_kd.students.data`)
-> batches (:mod:`retrieval_kd.students.sampler`: random, topic-aware or TAS-Balanced) -> loss
(:mod:`retrieval_kd.students.losses`) -> ``SentenceTransformerTrainer`` (checkpoints, ``resume_from_checkpoint``,
evaluation on held-out training queries, logging, DDP under ``torchrun``, bf16/fp16 and gradient checkpointing
through its training arguments) -> an ordinary SentenceTransformer folder with a model card.

References:
    Hofstaetter et al. 2020, "Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge
    Distillation" (Margin-MSE). Hofstaetter et al. 2021, "Efficiently Teaching an Effective Dense Retriever with
    Balanced Topic Aware Sampling" (TAS-Balanced, dual teacher).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval_kd.students.config import DenseTrainingConfig

logger = logging.getLogger(__name__)

__all__ = ["TrainingData", "cpu_precision", "keep_start", "last_dev_metrics", "prepare_training_data",
           "resume_point", "train_dense", "train_from", "training_precision"]


def cpu_precision(config: DenseTrainingConfig) -> dict[str, bool]:
    """Trainer arguments that make ``training.bf16`` (and ``bf16_full_eval``) work on a CPU; ``{}`` where none.

    Without a GPU the trainer refuses bf16 unless ``use_cpu`` is set: it is set. On a CPU without bf16
    instructions (AMX or AVX-512 BF16: :func:`retrieval_kd.encoders.backends.isa_target`) bf16 would be emulated,
    slower than fp32: the run trains in fp32 instead, with a warning. On a GPU the trainer decides.
    """
    from retrieval_kd.encoders import backends

    wanted = [k for k in ("bf16", "bf16_full_eval") if config.training.get(k)]
    if not wanted:
        return {}
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_cuda_available

    if not config.training.get("use_cpu") and (is_torch_cuda_available() or is_torch_bf16_gpu_available()):
        return {}
    if backends.isa_target("torch-bf16") == "bf16-emulated":
        logger.warning("%s: training.bf16: this CPU has no bf16 instructions (AMX or AVX-512 BF16), bf16 would be "
                       "emulated and slower than fp32; training in fp32", config.name)
        return dict.fromkeys(wanted, False)
    return {"use_cpu": True}


def training_precision(args) -> str:
    """``bf16``, ``fp16`` or ``fp32``: what the trainer's arguments compute in (for the summary)."""
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


@dataclass
class TrainingData:
    """What a distillation run trains on: teacher scores, pair dataset, dev split and batch sampler."""

    collection: Any
    fingerprint: str
    run: dict
    qrels: dict
    level: int
    train_q: list
    dev_q: list
    dataset: Any
    sampler: Any
    clusters: dict | None
    queries: dict | None = None  # query texts when they are not the collection's (data.queries)
    excluded: dict | None = None  # {qid: source} left out of the candidates (data.exclude_source)

    @property
    def query_texts(self) -> dict:
        return self.queries if self.queries is not None else self.collection.all_queries


def prepare_training_data(config: DenseTrainingConfig, collection=None) -> TrainingData:
    """Teacher scores -> (train, dev) query split -> pair dataset -> topic clusters -> batch sampler.

    ``data.positives`` other than ``qrels``: the queries of ``data.queries`` and pseudo-positives
    (:mod:`retrieval_kd.students.label_free`)."""
    from retrieval_kd.data import load_collection
    from retrieval_kd.students.data import pair_dataset, split_dev
    from retrieval_kd.students.sampler import tas_sampler
    from retrieval_kd.teachers.store import resolve_teacher_scores

    collection = collection or load_collection(config.data.dataset)
    label_free = None
    if config.data.positives == "qrels":
        qrels = collection.qrels(config.data.split)
        level = collection.conventions.relevance_level
        fingerprint, run = resolve_teacher_scores(config.data.store, config.data.teacher, qrels)
    else:
        from retrieval_kd.students.label_free import label_free_inputs

        label_free = label_free_inputs(config.data, collection)
        qrels, level, fingerprint, run = label_free.qrels, label_free.level, label_free.fingerprint, label_free.run
    queries = label_free.queries if label_free is not None else None
    seed = int(config.training.get("seed", 42))
    with_positive = [q for q, docs in run.items() if any(qrels.get(q, {}).get(d, 0) >= level for d in docs)]
    train_q, dev_q = split_dev(with_positive, config.data.dev_fraction, seed, config.data.dev_max_queries)
    dataset = pair_dataset(run, qrels, collection, level, config.data.max_negatives, config.data.teacher_scale,
                           query_ids=train_q, queries=queries)
    if label_free is not None:
        dataset = label_free.with_removed_spans(dataset, collection.corpus)
    train_q = sorted(set(dataset["query_id"]))
    batch_size = int(config.training.get("per_device_train_batch_size", 32))
    clusters = None
    if config.sampler.kind != "random":
        clusters = _query_clusters(config, collection, train_q, batch_size, seed, queries)
    sampler = tas_sampler(config.sampler.kind, clusters, config.sampler.n_bins)
    return TrainingData(collection, fingerprint, run, qrels, level, train_q, dev_q, dataset, sampler, clusters,
                        queries, label_free.excluded if label_free is not None else None)


def _last_complete_checkpoint(folder: str) -> str | None:
    """The newest ``checkpoint-N`` in ``folder`` that the trainer finished writing.

    The trainer writes a checkpoint in place, ``trainer_state.json`` last; one killed while it was written lacks
    that file (or holds a torn one) and would fail every resume, so it is passed over with a log line (the rerun
    writes it again).
    """
    steps = sorted(((int(m.group(1)), name) for name in os.listdir(folder)
                    if (m := re.fullmatch(r"checkpoint-(\d+)", name)) and os.path.isdir(os.path.join(folder, name))),
                   reverse=True)
    for _, name in steps:
        path = os.path.join(folder, name)
        try:
            with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as fh:
                json.load(fh)
        except (OSError, ValueError):
            logger.warning("%s: incomplete checkpoint (its run was killed while writing it); not resuming from it",
                           path)
            continue
        return path
    return None


def resume_point(config: DenseTrainingConfig) -> str | None:
    """The checkpoint to resume from: ``auto`` = the newest complete one in the checkpoint folder, ``never``, or
    a path."""
    resume = None
    if config.resume == "auto" and os.path.isdir(config.checkpoint_dir):
        resume = _last_complete_checkpoint(config.checkpoint_dir)
    elif config.resume not in ("auto", "never"):
        resume = config.resume
    if resume:
        logger.info("resuming from %s", resume)
    return resume


def train_from(trainer, resume: str | None):
    """``trainer.train(resume_from_checkpoint=resume)``, except from a checkpoint at ``max_steps``: its weights are
    loaded, nothing is trained. (transformers runs one more step after such a checkpoint, when ``max_steps`` ends
    mid-epoch; that checkpoint is what a run killed while saving its output leaves.) The returned training loss is
    then the mean of the logged losses."""
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    if resume:
        state = TrainerState.load_from_json(os.path.join(resume, "trainer_state.json"))
        if 0 < trainer.args.max_steps <= state.global_step:
            logger.info("%s: training had finished (step %d); loading it, not training", resume, state.global_step)
            trainer._load_from_checkpoint(resume)
            trainer.state = state
            losses = [h["loss"] for h in state.log_history if "loss" in h]
            return TrainOutput(state.global_step, sum(losses) / len(losses) if losses else float("nan"), {})
    return trainer.train(resume_from_checkpoint=resume)


def last_dev_metrics(trainer) -> dict[str, float]:
    """The last evaluation during training (at the training truncation) stands for the dev result."""
    evals = [h for h in trainer.state.log_history if any(k.startswith("eval_") for k in h)]
    return {k[5:]: float(v) for k, v in (evals[-1] if evals else {}).items() if k.startswith("eval_dev_")}


def train_dense(config: DenseTrainingConfig, collection=None, callbacks=None, overwrite: bool = False) -> dict[str, Any]:
    """Train the student that ``config`` describes and save it to ``config.output_dir``.

    Args:
        config: the run.
        collection: an already loaded collection (default: ``config.data.dataset``).
        callbacks: extra ``transformers.TrainerCallback`` objects.
        overwrite: replace ``output_dir`` even if retrieval-kd did not write it as a dense student (checked
            before training starts, so a refused folder fails at once).

    Returns a summary: output folder, training seconds, final training loss, dev metrics, teacher fingerprint.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer

    from retrieval_kd.models.resolve import resolve_model
    from retrieval_kd.students.data import DistillationCollator, InBatchTeacher, StoredInBatchTeacher, dev_evaluator
    from retrieval_kd.students.interpolate import apply_start_weight, snapshot, start_reference
    from retrieval_kd.students.losses import LOSSES, build_loss
    from retrieval_kd.utils.fs import check_output_folder

    check_output_folder(config.output_dir, "dense-student", overwrite)
    resolve_model(config.model, "student model")  # before the training data is prepared
    t0 = time.perf_counter()
    data = prepare_training_data(config, collection)
    collection, run, qrels, level = data.collection, data.run, data.qrels, data.level
    train_q, dev_q, dataset, sampler, clusters = data.train_q, data.dev_q, data.dataset, data.sampler, data.clusters
    fingerprint = data.fingerprint

    model = SentenceTransformer(config.model)
    model.max_seq_length = config.train_max_length or config.max_seq_length
    start = snapshot(model) if config.start_weight else None
    loss = build_loss(config.loss.name, model, config.loss.kl_temperature, config.loss.inbatch_weight,
                      config.loss.inbatch_temperature, config.loss.mnrl_scale,
                      config.loss.inbatch_teacher_temperature, config.loss.label_weight)
    evaluator = dev_evaluator(collection, dev_q, run, qrels, level, queries=data.queries) if dev_q else None
    args = config.training_arguments(sampler, has_evaluator=evaluator is not None, **cpu_precision(config))
    model.model_card_data.model_name = f"{config.name}: {Path(str(config.model)).name} distilled on {collection.name}"
    model.model_card_data.language = ["en"]
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss, evaluator=evaluator,
                                         callbacks=callbacks)
    inbatch = None
    if config.loss.name == "dual" and config.loss.inbatch_teacher == "store":
        scale = config.data.teacher_scale
        inbatch = StoredInBatchTeacher({q: {d: v * scale for d, v in run[q].items()} for q in train_q},
                                       exclude=data.excluded)
    elif config.loss.name == "dual":
        inbatch = InBatchTeacher.from_model(config.loss.inbatch_teacher, collection,
                                            {q: data.query_texts[q] for q in train_q}, config.max_seq_length)
    trainer.data_collator = DistillationCollator(trainer.data_collator, LOSSES[config.loss.name], inbatch)

    resume = resume_point(config)
    result = train_from(trainer, resume)
    seconds = time.perf_counter() - t0

    model.max_seq_length = config.max_seq_length
    apply_start_weight(model, start, config.start_weight)
    dev_metrics = last_dev_metrics(trainer)
    summary = {
        "name": config.name, "output_dir": str(config.output_dir), "teacher": fingerprint,
        "train_queries": len(train_q), "dev_queries": len(dev_q), "pairs": dataset.num_rows,
        "steps": trainer.state.global_step, "train_loss": float(result.training_loss),
        "train_seconds": round(seconds, 1), "resumed_from": resume, "dev": dev_metrics,
        "precision": training_precision(args), "start_weight": config.start_weight,
        "start": start_reference(config.model),
        "log_history": trainer.state.log_history,
    }
    if trainer.is_world_process_zero():
        _save(model, config, summary, clusters, overwrite=overwrite)
    return summary


def keep_start(config: DenseTrainingConfig, reason: str, overwrite: bool = False) -> dict[str, Any]:
    """Save the starting model ``config.model`` as the student, untrained, to ``config.output_dir``: the outcome of
    a run that decided, before training, that its teacher would not improve the start (``reason``, in the summary
    and the model card). The folder is a dense student like any other, so indexing and evaluation read it as they
    read a trained one. Returns the summary (0 steps)."""
    from sentence_transformers import SentenceTransformer

    from retrieval_kd.models.resolve import resolve_model
    from retrieval_kd.students.interpolate import start_reference
    from retrieval_kd.utils.fs import check_output_folder

    check_output_folder(config.output_dir, "dense-student", overwrite)
    resolve_model(config.model, "student model")
    model = SentenceTransformer(config.model)
    model.max_seq_length = config.max_seq_length
    summary = {"name": config.name, "output_dir": str(config.output_dir), "kept_start": reason, "steps": 0,
               "train_seconds": 0.0, "start": start_reference(config.model)}
    card = (f"\n\n## Distillation (retrieval-kd)\n\n- Not trained: the starting model `{config.model}` as it is "
            f"(max_seq_length {config.max_seq_length}). {reason}\n")
    _save(model, config, summary, card=card, overwrite=overwrite)
    logger.info("%s: the start %s kept, untrained: %s", config.output_dir, config.model, reason)
    return summary


def _query_clusters(config: DenseTrainingConfig, collection, train_q: list[str], batch_size: int, seed: int,
                    queries: dict | None = None) -> dict:
    """Topic clusters of the training queries: from ``sampler.clusters_file``, else FAISS k-means on embeddings."""
    from retrieval_kd.students.sampler import cluster_queries

    if config.sampler.clusters_file:
        path = Path(config.sampler.clusters_file)
        clusters = {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
        missing = [q for q in train_q if q not in clusters]
        if missing:
            raise KeyError(f"{path}: {len(missing)} training queries have no cluster (e.g. {missing[0]!r})")
        return {q: clusters[q] for q in train_q}
    from retrieval_kd.encoders import query_embeddings

    texts = {q: (collection.all_queries if queries is None else queries)[q] for q in train_q}
    emb = query_embeddings(config.sampler.cluster_model, texts, config.max_seq_length)
    k = config.sampler.n_clusters or max(1, len(train_q) // batch_size)
    clusters = dict(zip(train_q, cluster_queries(emb, k, seed=seed).tolist()))
    logger.info("clustered %d training queries into %d topics", len(train_q), len(set(clusters.values())))
    return clusters


def _save(model, config: DenseTrainingConfig, summary: dict, clusters: dict | None = None,
          card: str | None = None, kind: str = "dense-student", overwrite: bool = False) -> None:
    """Save the SentenceTransformer folder atomically (:func:`retrieval_kd.utils.fs.atomic_folder`) with a model
    card; an existing folder is replaced only when retrieval-kd wrote it as a student of the same kind."""
    from retrieval_kd.utils.fs import atomic_folder

    out = Path(config.output_dir)
    with atomic_folder(out, kind, overwrite=overwrite) as tmp:
        model.save(str(tmp))
        readme = tmp / "README.md"
        readme.write_text((readme.read_text() if readme.exists() else "") + (card or _card_section(config, summary)))
        if clusters is not None:
            (tmp / "rkd_clusters.json").write_text(json.dumps(clusters, sort_keys=True))
        (tmp / "rkd_training.json").write_text(json.dumps({"config": config.to_dict(), "summary": summary}, indent=1,
                                                          default=str))
    logger.info("saved %s", out)


def _card_section(config: DenseTrainingConfig, summary: dict) -> str:
    loss_names = {"margin-mse": "Margin-MSE (Hofstaetter et al. 2020)", "kl": "listwise KL over teacher scores",
                  "dual": "dual teacher: pairwise Margin-MSE + in-batch KL (Hofstaetter et al. 2021)",
                  "mnrl": "MultipleNegativesRankingLoss (no teacher)"}
    sampler_names = {"random": "random batches", "topic": "topic-aware batches (query clusters)",
                     "tas-balanced": "TAS-Balanced (query clusters + balanced margins, Hofstaetter et al. 2021)"}
    dev = "\n".join(f"| {k} | {v:.4f} |" for k, v in summary["dev"].items() if "ndcg" in k or "mrr" in k)
    lines = [
        "\n\n## Distillation (retrieval-kd)\n",
        f"- Student: `{config.model}` (max_seq_length {config.max_seq_length}, trained at "
        f"{config.train_max_length or config.max_seq_length} tokens)",
        f"- Teacher: `{summary['teacher']}` from the score store `{config.data.store}`",
        f"- Data: `{config.data.dataset}` split `{config.data.split}`: {summary['train_queries']} training queries, "
        f"{summary['pairs']} teacher-scored (query, positive, negative) pairs, up to {config.data.max_negatives} "
        "negatives per query",
        f"- Loss: {loss_names.get(config.loss.name, config.loss.name)}"
        + (f" + {config.loss.label_weight} x hard-target cross-entropy (Hinton et al. 2015)"
           if config.loss.label_weight else ""),
        f"- Batches: {sampler_names.get(config.sampler.kind, config.sampler.kind)}",
        f"- Steps: {summary['steps']}, final training loss {summary['train_loss']:.4f}, {summary['train_seconds']} s",
        *([f"- Saved weights: {config.start_weight} x the starting model + {1 - config.start_weight:g} x the "
           "trained one (WiSE-FT, Wortsman et al. 2022)"] if config.start_weight else []),
    ]
    if dev:
        mixed = ", of the trained weights before the start_weight mix" if config.start_weight else ""
        lines += [f"\nEvaluation on {summary['dev_queries']} held-out training queries (their candidate passages"
                  f"{mixed}):\n",
                  "| metric | value |", "|---|---:|", dev]
    return "\n".join(lines) + "\n"
