"""Typed configuration of a dense distillation run; YAML is read here and nowhere else.

A config file::

    name: scifact-demo
    model: sentence-transformers/all-MiniLM-L6-v2
    max_seq_length: 256          # saved with the model (inference)
    train_max_length: 128        # truncation while training (cheaper on a CPU)
    output_dir: experiments/scifact-dense/student
    data:
      dataset: scifact
      split: train
      store: experiments/scifact-dense/scores     # from `rkd teach`
      teacher: ensemble                           # name or fingerprint in the store
      max_negatives: 30
      dev_fraction: 0.1                           # held-out *train* queries for evaluation during training
      # without labels: queries: q.jsonl (rkd queries), positives: source | teacher | both (see DataConfig)
    loss: {name: margin-mse}                      # margin-mse | kl | dual | mnrl
    sampler: {kind: tas-balanced, n_bins: 10}     # random | topic | tas-balanced
    training:                                     # any SentenceTransformerTrainingArguments field
      num_train_epochs: 1
      per_device_train_batch_size: 32
      learning_rate: 2.0e-5

:func:`load_config` checks every key (a misspelt one is an error naming the file and key) and
:meth:`DenseTrainingConfig.training_arguments` turns the ``training`` block into
``SentenceTransformerTrainingArguments``, with the batch sampler plugged in.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from retrieval_kd.errors import ConfigError

__all__ = ["DataConfig", "DenseTrainingConfig", "LossConfig", "SamplerConfig", "SparseLossConfig",
           "SparseTrainingConfig", "load_config", "load_sparse_config"]


@dataclass
class DataConfig:
    """Where the teacher scores and texts come from.

    Attributes:
        dataset: dataset reference (registered name, BEIR folder, ``irds:`` id).
        split: the training split; its judged documents are the positives.
        store: score-store folder written by ``rkd teach``.
        teacher: teacher name or fingerprint in the store (``ensemble`` = the store's single ensemble).
        max_negatives: scored negatives kept per query (hardest first).
        teacher_scale: multiplies teacher scores (to match the student's score range).
        dev_fraction: share of training queries held out for evaluation during training (0: none).
        dev_max_queries: at most this many dev queries.
        queries: a ``queries.jsonl`` made by ``rkd queries`` (generated, cropped or imported; its provenance
            sidecar names each query's source document): train on these queries instead of the split's.
        positives: what a query's positives are: ``qrels`` (the split's judgements; the default, labelled
            distillation), ``source`` (the document each query of ``queries`` was made from, as GPL), ``teacher``
            (the teacher's top-scored candidate; ``teacher-topN``: its top N) or ``both`` (source and teacher top
            1). Without ``queries``, ``teacher`` takes the split's queries and ignores their judgements.
        mix_labeled: with ``queries``, also train on the split's judged queries with their qrels (labelled +
            generated).
        exclude_source: with ``queries`` and teacher positives, drop each query's source document from its scored
            candidates (neither positive nor negative): a cropped query is a substring of its source, so ranking
            the source first teaches exact lexical matching; the student learns the teacher's ranking of the
            *other* documents instead (which documents a sentence of one document points to).
    """

    dataset: str = "scifact"
    split: str = "train"
    store: str = "experiments/scifact-dense/scores"
    teacher: str = "ensemble"
    max_negatives: int | None = 30
    teacher_scale: float = 1.0
    dev_fraction: float = 0.1
    dev_max_queries: int | None = 100
    queries: str | None = None
    positives: str = "qrels"
    mix_labeled: bool = False
    exclude_source: bool = False


@dataclass
class LossConfig:
    """The training loss.

    Attributes:
        name: ``margin-mse`` (Hofstaetter et al. 2020), ``kl`` (listwise KL), ``dual`` (TAS-B's pairwise +
            in-batch teacher) or ``mnrl`` (no teacher: in-batch contrastive on qrels positives and mined negatives).
        kl_temperature: temperature of the listwise KL.
        inbatch_weight: lambda of the dual teacher's in-batch term.
        inbatch_temperature: softmax temperature of the student's in-batch scores (cosines).
        inbatch_teacher_temperature: softmax temperature of the in-batch teacher's scores (None: the same).
        inbatch_teacher: who scores in-batch pairs: ``store`` (the pairwise teacher's stored scores; a passage it
            did not score for a query gets that query's lowest score) or a SentenceTransformer whose cached
            embeddings score every pair.
        mnrl_scale: similarity scale of MultipleNegativesRankingLoss.
        label_weight: ``dual`` only: weight of Hinton's hard-target term (each query's positive against the batch's
            other passages, at the in-batch temperature) beside the teacher's soft targets; 0 leaves it out.
    """

    name: str = "margin-mse"
    kl_temperature: float = 1.0
    inbatch_weight: float = 1.0
    inbatch_temperature: float = 0.05
    inbatch_teacher_temperature: float | None = None
    inbatch_teacher: str = "store"
    mnrl_scale: float = 20.0
    label_weight: float = 0.0


@dataclass
class SamplerConfig:
    """Batch composition (TAS-Balanced, Hofstaetter et al. 2021).

    Attributes:
        kind: ``random``, ``topic`` (each batch from one query cluster) or ``tas-balanced`` (topic + pairs drawn
            uniformly over teacher-margin bins).
        n_clusters: k-means clusters of the training queries (default: queries / batch size).
        n_bins: margin bins per query.
        cluster_model: the SentenceTransformer whose query embeddings are clustered.
        clusters_file: a JSON ``{query_id: cluster}`` to use instead of clustering (the same topics across runs);
            a run that clusters writes its clusters to ``<output_dir>/rkd_clusters.json``.
    """

    kind: str = "tas-balanced"
    n_clusters: int | None = None
    n_bins: int = 10
    cluster_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    clusters_file: str | None = None


@dataclass
class DenseTrainingConfig:
    """A dense distillation run.

    Attributes:
        name: run name (model card, logs).
        model: the student to start from (hub id or SentenceTransformer folder).
        max_seq_length: the saved model's truncation (inference).
        train_max_length: truncation while training (None: ``max_seq_length``).
        output_dir: the saved SentenceTransformer folder; checkpoints go to ``<output_dir>-checkpoints``.
        resume: ``auto`` (resume from the newest checkpoint if there is one), ``never``, or a checkpoint path.
        data, loss, sampler: see their classes.
        training: keyword arguments of ``SentenceTransformerTrainingArguments``.
        start_weight: after training, the saved weights are ``start_weight * start + (1 - start_weight) *
            trained`` (WiSE-FT, Wortsman et al. 2022: :mod:`retrieval_kd.students.interpolate`); 0 (default)
            saves the trained model as it is. Keeps a student distilled from a teacher weaker than its start
            close to where it started.
    """

    name: str = "dense-student"
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    max_seq_length: int = 256
    train_max_length: int | None = None
    output_dir: str = "experiments/dense-student/model"
    resume: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    training: dict[str, Any] = field(default_factory=dict)
    start_weight: float = 0.0

    @property
    def checkpoint_dir(self) -> str:
        return f"{self.output_dir.rstrip('/')}-checkpoints"

    def training_arguments(self, batch_sampler=None, has_evaluator: bool = False, args_class=None, **extra):
        """Training arguments from the ``training`` block (the one place YAML becomes them).

        Args:
            batch_sampler: the ``batch_sampler`` argument (a sampler factory).
            has_evaluator: evaluate each epoch.
            args_class: ``SentenceTransformerTrainingArguments`` (default) or ``SparseEncoderTrainingArguments``.
            extra: arguments set by the caller (e.g. ``router_mapping``).
        """
        from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

        args_class = args_class or SentenceTransformerTrainingArguments

        kwargs = {"per_device_train_batch_size": 32, "num_train_epochs": 1, "learning_rate": 2e-5,
                  "warmup_steps": 0.1, "logging_steps": 5, "save_strategy": "epoch", "save_total_limit": 2,
                  "report_to": "none", "seed": 42, "dataloader_drop_last": False}
        if has_evaluator:
            kwargs.update({"eval_strategy": "epoch"})
        kwargs.update(self.training)
        names = {f.name for f in dataclasses.fields(args_class)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(f"config {self.name!r}: unknown training argument(s) {unknown}; see "
                             f"{args_class.__name__}")
        if batch_sampler is not None:
            kwargs["batch_sampler"] = batch_sampler
        kwargs.update(extra)
        return args_class(output_dir=self.checkpoint_dir, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FLOAT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)[eE][+-]?\d+$")


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``2e-5`` (no dot) as a string; such a value is the number the user meant."""
    return float(value) if isinstance(value, str) and _FLOAT.match(value.strip()) else value


def _build(cls, values: Any, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    kwargs = {}
    for key, value in values.items():
        factory = known[key].default_factory
        sub = factory if dataclasses.is_dataclass(factory) else None
        if sub:
            kwargs[key] = _build(sub, value, f"{where}: {key}")
        elif isinstance(value, dict):
            kwargs[key] = {k: _number(v) for k, v in value.items()}
        else:
            kwargs[key] = _number(value)
    return cls(**kwargs)


@dataclass
class SparseLossConfig:
    """Loss of an inference-free sparse student (Geng et al. 2024; FLOPS: Paria et al. 2020).

    Attributes:
        name: ``margin-mse`` or ``kl`` (distillation from the teacher's scores).
        kl_temperature: temperature of the listwise KL.
        document_regularizer_weight: lambda_d of the document FLOPS term (reached after the warm-up).
        regularizer_warmup: fraction of the steps over which lambda_d rises quadratically from 0.
        idf_aware: IDF in the matching function (query token weights = IDF, the IDF-aware penalty) or plain FLOPS
            with binary query tokens.
        calibrate_scale: before training, rescale the teacher's scores so that the spread (standard deviation) of
            its pair margins equals the untrained student's on a sample of training pairs. Sparse dot products
            are unbounded, so a teacher on another scale makes Margin-MSE shrink (or inflate) every weight
            instead of reordering documents.
        calibration_pairs: training pairs sampled for that calibration.
    """

    name: str = "margin-mse"
    kl_temperature: float = 1.0
    document_regularizer_weight: float = 3e-3
    regularizer_warmup: float = 1 / 3
    idf_aware: bool = True
    calibrate_scale: bool = True
    calibration_pairs: int = 128


@dataclass
class SparseTrainingConfig(DenseTrainingConfig):
    """An inference-free sparse distillation run: document side an MLM + SPLADE pooling, query side tokens x IDF.

    Attributes (besides :class:`DenseTrainingConfig`'s):
        model: the document encoder's MLM checkpoint (e.g. ``rkd-local/splade-tiny``).
        idf_file: ``{token: idf}`` JSON; computed over the training dataset's corpus when missing.
        query_max_length: query truncation (tokens).
        query_learning_rate: None (default): the query token weights stay the IDF they start from, as in Geng et
            al. 2024 and OpenSearch's ``idf.json`` models. A number: they are trained too, at this learning rate
            (the rest of the model keeps ``training.learning_rate``), as the learned query term weights of
            Nardini et al. 2025 ("Effective Inference-Free Retrieval for Learned Sparse Representations"). Only
            tokens seen in training queries move; the others keep their IDF.
        loss: :class:`SparseLossConfig`.
    """

    name: str = "sparse-student"
    model: str = "rkd-local/splade-tiny"
    output_dir: str = "experiments/sparse-student/model"
    idf_file: str | None = None
    query_max_length: int = 64
    query_learning_rate: float | None = None
    loss: SparseLossConfig = field(default_factory=SparseLossConfig)


def load_sparse_config(source: str | os.PathLike | dict, overrides: dict | None = None) -> SparseTrainingConfig:
    """A :class:`SparseTrainingConfig` from a YAML file (or a dict), validated like :func:`load_config`."""
    return load_config(source, overrides, cls=SparseTrainingConfig)


def load_config(source: str | os.PathLike | dict, overrides: dict | None = None,
                cls: type = DenseTrainingConfig) -> DenseTrainingConfig:
    """A :class:`DenseTrainingConfig` from a YAML file (or a dict), validated.

    Args:
        source: YAML path or a mapping.
        overrides: dotted keys to set after loading, e.g. ``{"loss.name": "kl", "training.seed": 1}``.
    """
    from retrieval_kd.utils.yaml_config import read_config

    values, where = read_config(source)
    values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for dotted, value in (overrides or {}).items():
        head, _, tail = dotted.partition(".")
        if tail:
            values.setdefault(head, {})[tail] = value
        else:
            values[head] = value
    config = _build(cls, values, where)
    from retrieval_kd.students.losses import LOSSES
    from retrieval_kd.students.sampler import SAMPLERS

    allowed = ("margin-mse", "kl") if isinstance(config, SparseTrainingConfig) else tuple(LOSSES)
    if config.loss.name not in allowed:
        raise ValueError(f"{where}: loss.name {config.loss.name!r} is not one of {sorted(allowed)}")
    if isinstance(config.loss, LossConfig):
        _check_label_weight(config.loss, where)
    if config.sampler.kind not in SAMPLERS:
        raise ValueError(f"{where}: sampler.kind {config.sampler.kind!r} is not one of {list(SAMPLERS)}")
    if not 0 <= config.data.dev_fraction < 1:
        raise ValueError(f"{where}: data.dev_fraction must be in [0, 1)")
    mn = config.data.max_negatives
    if mn is not None and (isinstance(mn, bool) or not isinstance(mn, int) or mn < 1):
        raise ConfigError(f"{where}: data.max_negatives must be an integer >= 1 (or null for all), got {mn!r}")
    _check_training(config.training, where)
    _check_positives(config.data, where)
    from retrieval_kd.students.interpolate import check_start_weight

    config.start_weight = check_start_weight(config.start_weight, f"{where}: start_weight")
    return config


def _check_label_weight(loss: LossConfig, where: str) -> None:
    lw = loss.label_weight
    if isinstance(lw, bool) or not isinstance(lw, (int, float)) or not math.isfinite(lw) or lw < 0:
        raise ConfigError(f"{where}: loss.label_weight must be a number >= 0, got {lw!r}")
    if lw and loss.name != "dual":
        raise ConfigError(f"{where}: loss.label_weight is a term of the dual loss; loss.name is {loss.name!r} "
                          "(set loss.name: dual)")


def _check_training(training: dict, where: str) -> None:
    """``training`` keys are trainer arguments, and a number where the argument's default is a number: checked when
    the config is read (the dry run too), not by the optimizer after the model has loaded."""
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments
    from sentence_transformers.sparse_encoder.training_args import SparseEncoderTrainingArguments

    if not isinstance(training, dict):
        raise ConfigError(f"{where}: training must be a mapping of trainer arguments")
    fields = {f.name: f for cls in (SentenceTransformerTrainingArguments, SparseEncoderTrainingArguments)
              for f in dataclasses.fields(cls)}
    for key, value in training.items():
        if key not in fields:
            raise ConfigError(f"{where}: training.{key} is not a trainer argument (see "
                              "SentenceTransformerTrainingArguments / SparseEncoderTrainingArguments)")
        default = fields[key].default
        if isinstance(default, (int, float)) and not isinstance(default, bool) and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{where}: training.{key} must be a number (default {default}), got {value!r}")


def _check_positives(data: DataConfig, where: str) -> None:
    from retrieval_kd.errors import ConfigError
    from retrieval_kd.queries.pseudo_qrels import parse_positive

    if data.positives == "qrels":
        if data.queries:
            raise ConfigError(f"{where}: data.positives qrels takes the split's judgements, which data.queries "
                              "has none of; use source, teacher or both (and data.mix_labeled for the split too)")
    else:
        try:
            use_source, _ = parse_positive(data.positives)
        except ConfigError as exc:
            raise ConfigError(f"{where}: data.{exc}; or qrels") from None
        if use_source and not data.queries:
            raise ConfigError(f"{where}: data.positives {data.positives} takes each query's source document: set "
                              "data.queries to a queries.jsonl made by `rkd queries`")
    if data.mix_labeled and not data.queries:
        raise ConfigError(f"{where}: data.mix_labeled adds the split's judged queries to data.queries; set it")
    if data.exclude_source and (not data.queries or data.positives == "qrels"
                                or parse_positive(data.positives)[0]):
        raise ConfigError(f"{where}: data.exclude_source drops each made-up query's source from its candidates: it "
                          "needs data.queries and teacher positives (data.positives teacher or teacher-topN)")
