"""The pipeline's YAML config: dataset, teachers, students, indexes and evaluation of one experiment.

A config is read into typed dataclasses and validated without loading a model or a dataset, so a GPU-scale
config can be checked on a laptop (``rkd pipeline CONFIG --dry-run``). Unknown keys are errors that name the
file and the key. The student sections point at the students' own configs (``configs/dense/``,
``configs/sparse/``) and override keys there; the pipeline itself sets where their inputs and outputs live.

Example (``configs/pipeline/scifact-demo.yaml`` is the full one)::

    name: scifact-demo
    dataset: scifact
    train_split: train
    eval: [{dataset: scifact, split: test}]
    teachers:
      members: [bm25, "bi-encoder:sentence-transformers/all-MiniLM-L6-v2"]
    students:
      dense: {config: configs/dense/scifact-demo.yaml}
      sparse: {config: configs/sparse/scifact-demo.yaml, set: {training.num_train_epochs: 1}}
    index: {nlist: 64, nprobe: 8, bytes: [48, 16]}
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval_kd.index.dense import INDEX_TYPES as _INDEX_KINDS

__all__ = ["EvalSet", "PipelineConfig", "load_pipeline_config", "check_dataset_ref"]


@dataclass
class EvalSet:
    """A test collection to evaluate on: a dataset reference and the split whose qrels judge the runs.

    ``corpus``: eval sets naming the same corpus share its indexes (TREC DL 2019, 2020 and MS MARCO dev all
    search the 8.8M passages); default: the set's own name.
    """

    dataset: str
    split: str = "test"
    name: str | None = None
    corpus: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            base = self.dataset.removeprefix("irds:").rstrip("/")
            self.name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{base}-{self.split}").strip("-")
        if not self.corpus:
            self.corpus = self.name


@dataclass
class CandidatesConfig:
    """Training candidates: the union of ``sources`` top-``top_k`` for each training query, plus its positives."""

    sources: list[str] = field(default_factory=lambda: ["bm25"])
    top_k: int = 100


@dataclass
class TeachersConfig:
    """Ensemble members (teacher specs, see :func:`retrieval_kd.teachers.parse_teacher`) and how they combine.

    ``weights`` fixed by hand, else fitted on the training split when ``fit_weights`` (never on an eval split),
    else equal. ``rerank_depth``: each teacher reranks BM25's top-k of every eval set for the report.
    """

    members: list[str] = field(default_factory=lambda: ["bm25"])
    normalization: str = "minmax"
    weights: list[float] | None = None
    fit_weights: bool = True
    fit_step: float = 0.1
    rerank_depth: int = 100


@dataclass
class StudentSection:
    """A student: its own config file, keys to override there (dotted, as ``rkd train --set``)."""

    config: str | None = None
    set: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudentsConfig:
    dense: StudentSection | None = None
    sparse: StudentSection | None = None


@dataclass
class IndexConfig:
    """Dense indexes built on the distilled dense student's corpus embeddings, and the sparse student's index.

    ``bytes``: code sizes (PQ sub-quantisers ``m`` at 8 bits) for pq, ivfpq, opq-ivfpq and distill-vq; every
    compressed index uses the same ``nlist`` and ``nprobe``. ``distill_vq``: fields of
    :class:`retrieval_kd.quantization.DistillVQConfig`. ``distill_vq_queries``: Distill-VQ's training queries,
    ``train`` (the training split's, embedded by the student), ``pseudo`` (only ``pseudo_queries`` sampled
    passages, the labels-free setting) or ``auto`` (``train`` when the eval set is the training dataset).
    ``speed_nprobe``: the sweep of the speed plot.
    """

    types: list[str] = field(default_factory=lambda: ["flat", "hnsw", "ivfpq", "opq-ivfpq", "distill-vq"])
    nlist: int = 64
    nprobe: int = 8
    bytes: list[int] = field(default_factory=lambda: [48, 16])
    distill_vq: dict[str, Any] = field(default_factory=dict)
    distill_vq_queries: str = "auto"
    speed_nprobe: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    sparse_prune: int | None = None
    threads: int = 1  # FAISS threads for searches and the speed sweep (builds use every core)


@dataclass
class PipelineConfig:
    """One experiment: everything under ``<output_root>/<name>/``.

    ``hardware`` and ``expected_minutes`` document what the config was sized for (the report records what it
    actually ran on).
    """

    name: str
    dataset: str
    train_split: str = "train"
    eval: list[EvalSet] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: ["ndcg@10", "mrr@10", "recall@100"])
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    students: StudentsConfig = field(default_factory=StudentsConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    retrieve_top_k: int = 1000
    description: str = ""
    hardware: str = ""
    expected_minutes: float | None = None
    output_root: str = "experiments"
    source: str | None = None  # the file it was read from (set by the loader)

    @property
    def work_dir(self) -> Path:
        return Path(self.output_root) / self.name

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


def _build(cls, values: Any, where: str, key: str):
    """A dataclass from a mapping, naming the file and dotted key of any unknown or mistyped entry."""
    if values is None:
        return cls() if cls is not PipelineConfig else None
    if not isinstance(values, dict):
        raise ValueError(f"{where}: {key or 'config'} must be a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known) - {"source"})
    if unknown:
        raise ValueError(f"{where}: unknown key {'.'.join(filter(None, [key, unknown[0]]))!r} "
                         f"(known: {', '.join(k for k in known if k != 'source')})")
    kwargs = {}
    for name, value in values.items():
        dotted = ".".join(filter(None, [key, name]))
        nested = {"candidates": CandidatesConfig, "teachers": TeachersConfig, "students": StudentsConfig,
                  "index": IndexConfig, "dense": StudentSection, "sparse": StudentSection}
        if name in nested and nested[name] is not None and cls in (PipelineConfig, StudentsConfig):
            kwargs[name] = None if value is None else _build(nested[name], value, where, dotted)
        elif name == "eval" and cls is PipelineConfig:
            if isinstance(value, (str, dict)):
                value = [value]
            sets = []
            for i, item in enumerate(value or []):
                item = {"dataset": item} if isinstance(item, str) else item
                sets.append(_build(EvalSet, item, where, f"eval[{i}]"))
            kwargs[name] = sets
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{where}: {key or 'config'}: {exc}") from None


def check_dataset_ref(ref: str) -> str:
    """Check that a dataset reference can be resolved, without downloading anything.

    A registered name (``data/manifests``), a BEIR-layout folder, or an ``irds:`` id that ir_datasets knows.
    Returns a short description; raises ``ValueError`` naming the reference otherwise.
    """
    from retrieval_kd.data.registry import list_datasets

    if ref.startswith("irds:"):
        import ir_datasets

        base = ref[len("irds:"):]
        if base not in ir_datasets.registry:
            raise ValueError(f"dataset {ref!r}: ir_datasets has no dataset {base!r}")
        return "ir_datasets"
    if ref in list_datasets():
        return "registered"
    if Path(ref, "corpus.jsonl").exists() or Path(ref, "queries.jsonl").exists():
        return "BEIR folder"
    raise ValueError(f"dataset {ref!r}: not a registered dataset ({', '.join(list_datasets())}), "
                     "a BEIR folder, or an ir_datasets id (irds:...)")


def _number(value, where: str, key: str, kind=int, minimum=1):
    if isinstance(value, str):
        try:
            value = kind(float(value)) if kind is int else kind(value)
        except ValueError:
            raise ValueError(f"{where}: {key} must be a number, got {value!r}") from None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{where}: {key} must be a number >= {minimum}, got {value!r}")
    return kind(value)


def load_pipeline_config(source: str | os.PathLike | dict, overrides: dict | None = None) -> PipelineConfig:
    """Read and validate a pipeline config (YAML path or mapping).

    Checks: required keys, unknown keys, dataset references resolvable offline, teacher specs parseable (no model
    is loaded), student configs loadable, index types and sizes. ``overrides``: dotted keys set after loading.
    """
    from retrieval_kd.utils.yaml_config import read_config

    values, where = read_config(source, "pipeline config")
    for dotted, value in (overrides or {}).items():
        node = values
        *heads, last = dotted.split(".")
        for head in heads:
            node = node.setdefault(head, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {dotted}: {head} is not a mapping")
        node[last] = value
    for required in ("name", "dataset"):
        if not values.get(required):
            raise ValueError(f"{where}: missing required key {required!r}")
    config = _build(PipelineConfig, values, where, "")
    config.source = None if isinstance(source, dict) else str(source)
    _validate(config, where)
    return config


def _validate(config: PipelineConfig, where: str) -> None:
    from retrieval_kd.teachers import parse_teacher

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", config.name):
        raise ValueError(f"{where}: name {config.name!r} must be a folder name (letters, digits, . _ -)")
    check_dataset_ref(config.dataset)
    if not config.eval:
        raise ValueError(f"{where}: eval lists no test collection")
    names = [e.name for e in config.eval]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: two eval sets share the name {sorted(n for n in names if names.count(n) > 1)[0]!r}")
    for i, ev in enumerate(config.eval):
        try:
            check_dataset_ref(ev.dataset)
        except ValueError as exc:
            raise ValueError(f"{where}: eval[{i}]: {exc}") from None
        if ev.dataset == config.dataset and ev.split == config.train_split:
            raise ValueError(f"{where}: eval[{i}] is the training split {ev.split!r} of {ev.dataset!r}")
    if not config.metrics:
        raise ValueError(f"{where}: metrics is empty")
    for s in config.candidates.sources:
        if s not in ("bm25", "dense"):
            raise ValueError(f"{where}: candidates.sources: unknown source {s!r} (bm25, dense)")
    config.candidates.top_k = _number(config.candidates.top_k, where, "candidates.top_k")
    if not config.teachers.members:
        raise ValueError(f"{where}: teachers.members is empty")
    for i, spec in enumerate(config.teachers.members):
        try:
            parse_teacher(spec)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{where}: teachers.members[{i}] {spec!r}: {exc}") from None
    if config.teachers.normalization not in ("minmax", "zscore", "none"):
        raise ValueError(f"{where}: teachers.normalization must be minmax, zscore or none")
    if config.teachers.weights is not None and len(config.teachers.weights) != len(config.teachers.members):
        raise ValueError(f"{where}: teachers.weights has {len(config.teachers.weights)} values for "
                         f"{len(config.teachers.members)} members")
    ix = config.index
    for t in ix.types:
        if t not in _INDEX_KINDS:
            raise ValueError(f"{where}: index.types: unknown type {t!r} (one of {', '.join(_INDEX_KINDS)})")
    ix.nlist = _number(ix.nlist, where, "index.nlist")
    ix.nprobe = _number(ix.nprobe, where, "index.nprobe")
    ix.bytes = [_number(b, where, "index.bytes") for b in ix.bytes]
    ix.speed_nprobe = [_number(n, where, "index.speed_nprobe") for n in ix.speed_nprobe]
    if ix.sparse_prune is not None:
        ix.sparse_prune = _number(ix.sparse_prune, where, "index.sparse_prune")
    from retrieval_kd.quantization import DistillVQConfig

    unknown = sorted(set(ix.distill_vq) - {f.name for f in dataclasses.fields(DistillVQConfig)} - {"nlist", "m"})
    if unknown:
        raise ValueError(f"{where}: index.distill_vq: unknown key {unknown[0]!r}")
    if ix.distill_vq_queries not in ("auto", "train", "pseudo"):
        raise ValueError(f"{where}: index.distill_vq_queries must be auto, train or pseudo")
    config.retrieve_top_k = _number(config.retrieve_top_k, where, "retrieve_top_k")
    if config.students.dense is None and any(t in ix.types for t in _INDEX_KINDS) and ix.types:
        raise ValueError(f"{where}: index.types needs students.dense (the indexes hold its embeddings); "
                         "set index.types: [] to build none")
    for kind in ("dense", "sparse"):
        section = getattr(config.students, kind)
        if section is not None:
            try:
                student_config(config, kind)
            except (ValueError, FileNotFoundError) as exc:
                raise ValueError(f"{where}: students.{kind}: {exc}") from None


def student_config(config: PipelineConfig, kind: str):
    """The student's training config: its own file, the section's overrides, then the pipeline's paths."""
    from retrieval_kd.students import load_config, load_sparse_config

    section: StudentSection = getattr(config.students, kind)
    if section.config is None:
        raise ValueError("config: the student's config file is missing")
    path = Path(section.config)
    if not path.is_absolute() and not path.exists() and config.source:
        path = Path(config.source).parent / path  # relative to the pipeline config
    work = config.work_dir
    forced = {
        "output_dir": str(work / "models" / kind),
        "resume": "auto",
        "data.dataset": config.dataset,
        "data.split": config.train_split,
        "data.store": str(work / "scores"),
    }
    if kind == "sparse":
        forced["idf_file"] = str(work / "models" / "sparse-idf.json")
    overrides = {**dict(section.set), **forced}
    overrides.setdefault("data.teacher", "ensemble")
    for key in forced:
        if key in section.set and section.set[key] != forced[key]:
            raise ValueError(f"set: {key} is decided by the pipeline ({forced[key]})")
    loader = load_config if kind == "dense" else load_sparse_config
    return loader(path, overrides)
