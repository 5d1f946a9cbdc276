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
import logging
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval_kd.errors import ConfigError, UnavailableError
from retrieval_kd.index.dense import INDEX_TYPES as _INDEX_KINDS

logger = logging.getLogger(__name__)

__all__ = ["EvalSet", "PipelineConfig", "load_pipeline_config", "check_dataset_ref", "check_split"]


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


def _describe(hint) -> str:
    """What a type annotation asks for, in words (for error messages)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        words = " or ".join(_describe(a) for a in args if a is not type(None))
        return words + (" or null" if type(None) in args else "")
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('a ').removeprefix('an ')}s"
    if typing.get_origin(hint) is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return {bool: "true or false (a YAML boolean, unquoted)", int: "an integer", float: "a number", str: "a string",
            }.get(hint, getattr(hint, "__name__", str(hint)))


def _checked(value: Any, hint, where: str, dotted: str):
    """``value`` if it is what ``hint`` annotates (nested dataclasses built), else a ConfigError naming the key.

    ``bool`` must be a real boolean (the string ``"false"`` is refused, it would be true), ``int`` an integer (not a
    boolean, not a string), ``float`` any number, ``list[X]`` a list of X, ``X | None`` also null.
    """
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _checked(value, arg, where, dotted)
            except ConfigError:
                if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                    raise  # the mapping's own error names the key inside it
        ok = False
    elif dataclasses.is_dataclass(hint):
        return _build(hint, value, where, dotted)
    elif origin is list:
        if isinstance(value, list):
            return [_checked(v, typing.get_args(hint)[0], where, f"{dotted}[{i}]") for i, v in enumerate(value)]
        ok = False
    elif origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return value
        ok = False
    elif hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif hint is str:
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, hint) if isinstance(hint, type) else True
    if not ok:
        got = f"the string {value!r}" if isinstance(value, str) else f"{value!r} ({type(value).__name__})"
        raise ConfigError(f"{where}: {dotted} must be {_describe(hint)}, got {got}")
    return value


def _build(cls, values: Any, where: str, key: str):
    """A dataclass from a mapping, naming the file and dotted key of any unknown, missing or mistyped entry.

    Every value is checked against its field's annotation (:func:`_checked`); nested sections are built the same
    way. A section given as null takes its defaults.
    """
    if values is None:
        return cls() if cls is not PipelineConfig else None
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {key or 'config'} must be a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known) - {"source"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {'.'.join(filter(None, [key, unknown[0]]))!r} "
                          f"(known: {', '.join(k for k in known if k != 'source')})")
    missing = [f.name for f in known.values() if f.name not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key {'.'.join(filter(None, [key, missing[0]]))!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        dotted = ".".join(filter(None, [key, name]))
        if name == "source":
            continue
        if name == "eval" and cls is PipelineConfig:
            if isinstance(value, (str, dict)):
                value = [value]
            if value is not None and not isinstance(value, list):
                raise ConfigError(f"{where}: eval must be a list of eval sets (mappings or dataset names), got "
                                  f"{value!r}")
            kwargs[name] = [_build(EvalSet, {"dataset": item} if isinstance(item, str) else item, where, f"eval[{i}]")
                            for i, item in enumerate(value or [])]
        else:
            kwargs[name] = _checked(value, hints[name], where, dotted)
    return cls(**kwargs)


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


def dataset_splits(ref: str) -> list[str]:
    """The qrels splits a dataset reference has, read offline: a registered dataset's manifest, a BEIR folder's
    ``qrels/<split>.tsv[.gz]``, or the one split an ``irds:`` id's qrels are (its name's split component)."""
    from retrieval_kd.data.registry import get_manifest, list_datasets

    if ref.startswith("irds:"):
        from retrieval_kd.data.irds import _split_of

        return [_split_of(ref[len("irds:"):])]
    if ref in list_datasets():
        return get_manifest(ref).splits
    return sorted({p.name.split(".")[0] for p in Path(ref, "qrels").glob("*.tsv*")})


def check_split(ref: str, split: str) -> None:
    """Raise :class:`~retrieval_kd.errors.ConfigError` when dataset ``ref`` has no qrels for ``split``."""
    splits = dataset_splits(ref)
    if split not in splits:
        raise ConfigError(f"dataset {ref!r} has no split {split!r} (its qrels splits: {', '.join(splits) or 'none'})")


_FOLDER_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _folder_name(value: str, where: str, key: str) -> None:
    """A name that becomes one folder under the experiment: no separators, and never ``.`` or ``..``."""
    if not _FOLDER_NAME.fullmatch(value) or set(value) == {"."}:
        raise ConfigError(f"{where}: {key} {value!r} must be a folder name (letters, digits, . _ -; not . or ..), "
                          "it names a folder under the output root")


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
    from retrieval_kd.eval import validate_metrics
    from retrieval_kd.teachers import parse_teacher

    _folder_name(config.name, where, "name")
    try:
        check_dataset_ref(config.dataset)
    except ValueError as exc:
        raise ConfigError(f"{where}: dataset: {exc}") from None
    try:
        check_split(config.dataset, config.train_split)
    except ConfigError as exc:
        raise ConfigError(f"{where}: train_split: {exc}") from None
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
        try:
            check_split(ev.dataset, ev.split)
        except ConfigError as exc:
            raise ConfigError(f"{where}: eval[{i}].split: {exc}") from None
        _folder_name(ev.name, where, f"eval[{i}].name")
        _folder_name(ev.corpus, where, f"eval[{i}].corpus")
    if not config.metrics:
        raise ValueError(f"{where}: metrics is empty")
    try:
        validate_metrics(config.metrics)
    except ValueError as exc:
        raise ConfigError(f"{where}: metrics: {exc}") from None
    for s in config.candidates.sources:
        if s not in ("bm25", "dense"):
            raise ValueError(f"{where}: candidates.sources: unknown source {s!r} (bm25, dense)")
    config.candidates.top_k = _number(config.candidates.top_k, where, "candidates.top_k")
    if not config.teachers.members:
        raise ValueError(f"{where}: teachers.members is empty")
    for i, spec in enumerate(config.teachers.members):
        try:
            teacher = parse_teacher(spec)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{where}: teachers.members[{i}] {spec!r}: {exc}") from None
        _warn_unavailable(getattr(teacher, "model_name", None), where, f"teachers.members[{i}]")
    tc = config.teachers
    tc.rerank_depth = _number(tc.rerank_depth, where, "teachers.rerank_depth")
    if not 0 < tc.fit_step <= 1:
        raise ConfigError(f"{where}: teachers.fit_step must be in (0, 1] (the weight grid's step), got {tc.fit_step}")
    if tc.weights is not None and any(w < 0 for w in tc.weights):
        raise ConfigError(f"{where}: teachers.weights must be >= 0, got {tc.weights}")
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
    try:  # its own value checks (holdout share, epochs)
        DistillVQConfig(**{k: v for k, v in ix.distill_vq.items() if k not in ("nlist", "m")})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: index.{exc}") from None
    if ix.distill_vq_queries not in ("auto", "train", "pseudo"):
        raise ValueError(f"{where}: index.distill_vq_queries must be auto, train or pseudo")
    ix.threads = _number(ix.threads, where, "index.threads")
    for key in ("nprobe", "speed_nprobe"):
        too_many = [n for n in ([ix.nprobe] if key == "nprobe" else ix.speed_nprobe) if n > ix.nlist]
        if too_many and any(t in ix.types for t in _IVF_KINDS):
            raise ConfigError(f"{where}: index.{key}: {too_many[0]} is more than index.nlist ({ix.nlist}) lists")
    config.retrieve_top_k = _number(config.retrieve_top_k, where, "retrieve_top_k")
    if tc.rerank_depth > config.retrieve_top_k:
        raise ConfigError(f"{where}: teachers.rerank_depth ({tc.rerank_depth}) is more than retrieve_top_k "
                          f"({config.retrieve_top_k}): BM25's runs, which the teachers rerank, hold no more")
    if config.students.dense is None and any(t in ix.types for t in _INDEX_KINDS) and ix.types:
        raise ValueError(f"{where}: index.types needs students.dense (the indexes hold its embeddings); "
                         "set index.types: [] to build none")
    for kind in ("dense", "sparse"):
        section = getattr(config.students, kind)
        if section is not None:
            try:
                student = student_config(config, kind)
            except (ValueError, FileNotFoundError) as exc:
                raise ValueError(f"{where}: students.{kind}: {exc}") from None
            _warn_unavailable(student.model, where, f"students.{kind}")
            if kind == "dense":
                _check_code_sizes(config, student.model, where)


_IVF_KINDS = ("ivfpq", "opq-ivfpq", "distill-vq")
_PQ_KINDS = ("pq", "ivfpq", "opq-ivfpq", "distill-vq")


def _warn_unavailable(model: str | None, where: str, key: str) -> None:
    """Log (not raise) a model that cannot be loaded here: a config is often checked away from where it runs."""
    if not model:
        return
    from retrieval_kd.models import resolve_model

    try:
        resolve_model(model)
    except UnavailableError as exc:
        logger.warning("%s: %s: %s (the run will need it)", where, key, exc)


def _check_code_sizes(config: PipelineConfig, model: str, where: str) -> None:
    """``index.bytes`` (PQ sub-quantizers) must divide the dense student's embedding dimension, read offline."""
    from retrieval_kd.models import embedding_dimension

    if not any(t in config.index.types for t in _PQ_KINDS):
        return
    dim = embedding_dimension(model)
    if dim is None:
        logger.info("%s: the dense student %s is not here; index.bytes not checked against its dimension", where,
                    model)
        return
    bad = [b for b in config.index.bytes if dim % b]
    if bad:
        divisors = [k for k in range(1, dim + 1) if dim % k == 0]
        raise ConfigError(f"{where}: index.bytes: {bad[0]} does not divide the dense student's embedding dimension "
                          f"{dim} ({model}); PQ codes d/m dimensions per byte: use one of "
                          f"{', '.join(map(str, divisors))}")


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
