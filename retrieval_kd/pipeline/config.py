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
    encoding: auto       # the students' and the initial model's encoders (teachers: teachers.encoding)

Without labels (``configs/pipeline/label-free.yaml``), a ``queries`` section makes the training queries from the
corpus (:class:`QueriesConfig`) and the collection needs no training split, only its test split::

    queries: {source: crop, method: sentence, per_document: 2, max_queries: 3000,
              filters: {round_trip: bm25, round_trip_k: 5}, positives: teacher}
    teachers: {members: [bm25, "bi-encoder:sentence-transformers/all-MiniLM-L6-v2"], fit_weights: false}

``rkd pipeline CONFIG --dataset PATH`` runs a config on another collection (:func:`load_pipeline_config`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval_kd.encoders.backends import ENCODING_CHOICES, Encoding, resolve_encoding
from retrieval_kd.errors import ConfigError, UnavailableError
from retrieval_kd.index.dense import INDEX_TYPES as _INDEX_KINDS

logger = logging.getLogger(__name__)

__all__ = ["EvalSet", "PipelineConfig", "QueriesConfig", "STAGE_ORDER", "collection_name", "current_check",
           "load_pipeline_config", "check_dataset_ref", "check_split", "needs_train_split", "resolved_encoding", "slug"]

#: the pipeline's stages, in the order they run (the config selects among them)
STAGE_ORDER = ("queries", "mine", "teach", "train-dense", "train-sparse", "index", "retrieve", "evaluate", "report")

#: what ``teachers.fit_on`` fits the ensemble's weights on: the training split's qrels, the made-up queries' sources,
#: or sentences cut out of the corpus's documents (the inverse cloze task, :mod:`retrieval_kd.teachers.ict_weights`)
FIT_ON = ("split", "sources", "ict")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def slug(text: str, strip: str = "-", limit: int | None = None) -> str:
    """``text`` as a folder-safe name: each run of characters other than letters, digits and ``_ . -`` becomes
    ``-``, then ``strip`` is taken off both ends and the result cut to ``limit`` characters."""
    return _UNSAFE.sub("-", text).strip(strip)[:limit]


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
            self.name = slug(f"{base}-{self.split}")
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

    ``weights`` fixed by hand, else fitted when ``fit_weights`` (never on an eval split), else equal. ``fit_on``
    says on what: ``split``, the training split's judged queries; ``sources``, the made-up training queries with
    the document each was made from as its one relevant document (GPL's pseudo-labels, Wang et al. 2022): no
    human label is read. For cropped queries this rewards word overlap (a crop is a substring of its source) and
    drifts towards BM25: measure it against equal weights (docs/label-free.md, "Ensemble weights without labels").
    ``ict``: on ``fit_queries`` sentences cut *out of* their documents, each document without its sentence the
    relevant one (:func:`retrieval_kd.teachers.ict_weights.fit_weights_ict`; the corpus alone, any collection,
    label-free).
    ``rerank_depth``: each teacher reranks BM25's top-k of every eval set for the report.
    ``encoding``: the backend of the bi-encoder and SPLADE members whose spec names none (``...,encoding=X``
    does): ``torch`` (fp32, the default: teachers stay exact unless asked), another of
    :data:`~retrieval_kd.encoders.backends.ENCODINGS`, or ``auto``; apart from the students' ``encoding``.
    """

    members: list[str] = field(default_factory=lambda: ["bm25"])
    normalization: str = "minmax"
    weights: list[float] | None = None
    fit_weights: bool = True
    fit_on: str = "split"
    fit_step: float = 0.1
    fit_queries: int = 300
    rerank_depth: int = 100
    encoding: str = "torch"


@dataclass
class QueryFiltersSection:
    """Filters of the made-up queries (:class:`retrieval_kd.queries.QueryFilters`), cheap ones first.

    ``min_words`` / ``max_words``: length limits in words; ``dedupe``: drop queries equal once normalised;
    ``round_trip``: ``bm25`` or a SentenceTransformer that must rank a query's source document in its top
    ``round_trip_k`` (null: off).
    """

    min_words: int = 1
    max_words: int | None = None
    dedupe: bool = True
    round_trip: str | None = None
    round_trip_k: int = 1


@dataclass
class QueriesConfig:
    """Where the training queries come from (issue 19: distillation without human labels).

    ``source``: ``split`` (the ``train_split``'s judged queries and qrels: labelled distillation, the default),
    ``crop`` (cut from the documents, no model: :func:`retrieval_kd.queries.crop_queries`), ``generate`` (a
    language model writes them: :func:`retrieval_kd.queries.generate_queries`, resumable) or ``import`` (a file
    made elsewhere: :func:`retrieval_kd.queries.import_queries`). Made-up queries are written to
    ``<work>/queries/queries.jsonl`` with their provenance sidecar by the ``queries`` stage; the training
    candidates are their BM25 (+ dense) top-k plus each query's source document.

    Keys of every made-up source: ``filters`` (:class:`QueryFiltersSection`), ``positives`` (``source``: the
    document a query was made from, as GPL; ``teacher`` / ``teacher-topN``: the ensemble's top 1 / N candidates;
    ``both``), ``mix_labeled`` (also train on the ``train_split``'s judged queries with their qrels),
    ``max_queries`` (a sample of at most this many of the filtered queries, seeded by ``seed``), ``seed``,
    ``id_prefix`` (query ids ``<prefix>-<doc>-<n>``).

    ``crop``: ``method`` (``title``, ``sentence`` = inverse cloze task, ``span`` = Contriever cropping),
    ``per_document``, ``remove_sentence``, ``span_ratio``, ``min_span_words``, ``max_span_words``,
    ``max_documents`` (a seeded sample of the corpus; default :attr:`documents`), ``skip_empty``.

    ``generate``: ``model`` (a causal LM, few-shot prompted, or a seq2seq doc2query model), ``examples`` (JSON
    lines ``{"document", "query"}``, 1-8), ``prompt``, ``per_document``, ``batch_size``, ``max_new_tokens``,
    ``max_document_tokens``, ``temperature``, ``top_p``, ``top_k``, ``chat_template``, ``device``, ``dtype``,
    ``max_documents`` (as for crop), ``skip_empty``.

    ``import``: ``path`` (a BEIR generated-queries file, a GPL data folder or a TSV), ``format`` (``auto``,
    ``beir``, ``gpl``, ``tsv``), ``prefix`` (GPL's file prefix).
    """

    source: str = "split"
    # made-up queries, every source
    filters: QueryFiltersSection = field(default_factory=QueryFiltersSection)
    positives: str = "source"
    mix_labeled: bool = False
    max_queries: int | None = None
    seed: int = 0
    id_prefix: str | None = None
    # crop and generate
    per_document: int | None = None
    max_documents: int | None = None
    skip_empty: bool = True
    # crop
    method: str = "sentence"
    remove_sentence: float = 0.0
    span_ratio: list[float] = field(default_factory=lambda: [0.1, 0.5])
    min_span_words: int = 1
    max_span_words: int | None = None
    # generate
    model: str | None = None
    examples: str | None = None
    prompt: str | None = None
    batch_size: int = 8
    max_new_tokens: int = 32
    max_document_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int | None = None
    chat_template: bool = True
    device: str | None = None
    dtype: str = "auto"
    # import
    path: str | None = None
    format: str = "auto"
    prefix: str = "qgen"

    @property
    def made_up(self) -> bool:
        """Whether the training queries are made from the corpus (a ``queries`` stage runs)."""
        return self.source != "split"

    @property
    def documents(self) -> int | None:
        """How many documents ``crop`` and ``generate`` make queries from: ``max_documents``, else
        :data:`DOCUMENTS_PER_QUERY` per query of the ``max_queries`` budget (None: every document)."""
        if self.max_documents is not None or self.max_queries is None:
            return self.max_documents
        return DOCUMENTS_PER_QUERY * self.max_queries


#: without ``queries.max_documents``, made-up queries come from a seeded sample of this many documents per query of
#: the ``max_queries`` budget, so that a corpus of millions is not cropped, filtered or generated whole to keep a few
#: thousand queries (the filters still choose among 8 sentence crops per kept query at 2 a document). A corpus no
#: larger than that is used whole, as before: 3,000 queries read up to 12,000 documents (SciFact, TREC DL 2019's
#: judged subset, Cranfield and CISI whole).
DOCUMENTS_PER_QUERY = 4


_QUERY_KEYS = {
    "split": {"source"},
    "crop": {"method", "per_document", "remove_sentence", "span_ratio", "min_span_words", "max_span_words",
             "max_documents", "skip_empty"},
    "generate": {"model", "examples", "prompt", "per_document", "batch_size", "max_new_tokens", "max_document_tokens",
                 "temperature", "top_p", "top_k", "chat_template", "device", "dtype", "max_documents", "skip_empty"},
    "import": {"path", "format", "prefix"},
}
_MADE_UP_KEYS = {"source", "filters", "positives", "mix_labeled", "max_queries", "seed", "id_prefix"}


@dataclass
class StudentSection:
    """A student: its own config file, keys to override there (dotted, as ``rkd train --set``).

    ``weak_teacher`` (dense student only): what the train stage does when the label-free check of the teacher
    against the student's start (``teachers.fit_on: ict``; ``teacher_vs_start`` in the teach summary) does not find
    the teacher clearly better: ``train`` anyway (the log and the report warn), or ``keep-start``: the start is
    saved as the student, untrained, and indexed and evaluated as the student."""

    config: str | None = None
    set: dict[str, Any] = field(default_factory=dict)
    weak_teacher: str = "train"


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

    ``encoding``: the backend of every encoder of the students and of the dense student's initial model (corpus
    and query embeddings of the index and retrieve stages, the sparse index, dense training candidates):
    ``torch`` (fp32, the default), another of :data:`~retrieval_kd.encoders.backends.ENCODINGS`, or ``auto``
    (picked by this CPU's instruction sets, logged and recorded with the reason). The concrete backend and
    instruction set are part of those stages' fingerprints. Teachers have their own: ``teachers.encoding``.
    """

    name: str
    dataset: str
    train_split: str = "train"
    eval: list[EvalSet] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: ["ndcg@10", "mrr@10", "recall@100"])
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    queries: QueriesConfig = field(default_factory=QueriesConfig)
    students: StudentsConfig = field(default_factory=StudentsConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    retrieve_top_k: int = 1000
    encoding: str = "torch"
    description: str = ""
    hardware: str = ""
    expected_minutes: float | None = None
    output_root: str = "experiments"
    source: str | None = None  # the file it was read from (set by the loader)
    on_dataset: str | None = None  # rkd pipeline --dataset (set by the loader)

    @property
    def work_dir(self) -> Path:
        return Path(self.output_root) / self.name

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        out.pop("on_dataset")
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
    internal = {"source", "on_dataset"} if cls is PipelineConfig else set()  # set by the loader, not file keys
    unknown = sorted(set(values) - (set(known) - internal))
    if unknown:
        raise ConfigError(f"{where}: unknown key {'.'.join(filter(None, [key, unknown[0]]))!r} "
                          f"(known: {', '.join(k for k in known if k not in internal)})")
    missing = [f.name for f in known.values() if f.name not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key {'.'.join(filter(None, [key, missing[0]]))!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        dotted = ".".join(filter(None, [key, name]))
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


def collection_name(ref: str) -> str:
    """A folder-safe short name of a dataset reference: a BEIR folder's basename, a registered name, an ``irds:``
    id with ``/`` as ``-``."""
    base = ref.removeprefix("irds:").rstrip("/\\")
    if not ref.startswith("irds:"):
        base = Path(base).name
    return slug(base, strip="-.") or "dataset"


def _experiment_suffix(ref: str, kind: str) -> str:
    """What ``--dataset ref`` appends to the experiment's name: the collection name, and for a folder a short hash
    of its absolute path, so ``/a/scifact``, ``/b/scifact`` and the registered ``scifact`` get folders of their
    own."""
    import hashlib

    short = collection_name(ref)
    if kind != "BEIR folder":
        return short
    return f"{short}-{hashlib.sha256(str(Path(ref).resolve()).encode()).hexdigest()[:6]}"


def _on_dataset(values: dict, dataset: str) -> None:
    """``values`` made to run on ``dataset``: it replaces ``dataset``, its test split replaces ``eval``, and the
    experiment folder becomes ``<name>-<collection name>`` (for a folder, ``-<hash of its path>`` after it)."""
    try:
        kind = check_dataset_ref(dataset)
    except ValueError as exc:
        raise ConfigError(f"--dataset: {exc}") from None
    splits = dataset_splits(dataset)
    if "test" not in splits:
        raise ConfigError(f"--dataset {dataset}: no test split to evaluate on (its qrels splits: "
                          f"{', '.join(splits) or 'none'}); a BEIR folder needs qrels/test.tsv")
    short = collection_name(dataset)
    values["dataset"] = dataset
    values["eval"] = [{"dataset": dataset, "split": "test", "name": f"{short}-test", "corpus": short}]
    values["name"] = f"{values['name']}-{_experiment_suffix(dataset, kind)}"


def load_pipeline_config(source: str | os.PathLike | dict, overrides: dict | None = None,
                         dataset: str | None = None) -> PipelineConfig:
    """Read and validate a pipeline config (YAML path or mapping).

    Checks: required keys, unknown keys, dataset references resolvable offline, teacher specs parseable (no model
    is loaded), student configs loadable, index types and sizes, the training queries' section, and that the
    training split exists where something needs it. ``overrides``: dotted keys set after loading. ``dataset``:
    run the config on that collection (``rkd pipeline --dataset``): it replaces ``dataset``, its ``test`` split
    replaces ``eval``, and the experiment is ``<name>-<collection name>`` (a folder: plus a short hash of its path).
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
    if dataset is not None:
        set_eval = {k: v for k, v in (overrides or {}).items() if k == "eval" or k.startswith("eval.")}
        if set_eval:
            logger.warning("--dataset %s replaces the eval sets, so --set %s is not used (eval was %r)", dataset,
                           " ".join(f"{k}={v!r}" for k, v in set_eval.items()), values.get("eval"))
        _on_dataset(values, str(dataset))
    config = _build(PipelineConfig, values, where, "")
    config.source = None if isinstance(source, dict) else str(source)
    config.on_dataset = None if dataset is None else str(dataset)
    raw_queries = values.get("queries")
    _validate(config, where, set(raw_queries) if isinstance(raw_queries, dict) else set())
    return config


def needs_train_split(config: PipelineConfig) -> list[str]:
    """What in ``config`` reads the ``train_split``'s judgements, in words (empty: the config runs on a collection
    that has only a test split)."""
    q, tc = config.queries, config.teachers
    reasons = []
    if not q.made_up:
        reasons.append("queries.source split (the default) trains on its judged queries; make the training queries "
                       "from the corpus instead (queries.source: crop, generate or import)")
    elif q.mix_labeled:
        reasons.append("queries.mix_labeled adds its judged queries; set it to false")
    if tc.fit_weights and tc.fit_on == "split" and tc.weights is None and len(tc.members) > 1:
        reasons.append("teachers.fit_weights: the ensemble's weights are fitted on the split's labels; set "
                       "teachers.fit_on: ict (sentences cut out of the corpus's documents), teachers.fit_weights: "
                       "false (equal weights) or give teachers.weights")
    return reasons


def config_path(config: PipelineConfig, value: str) -> Path:
    """A path of the config: as given when it exists (or is absolute), else relative to the config's folder."""
    path = Path(value)
    if not path.is_absolute() and not path.exists() and config.source:
        beside = Path(config.source).parent / path
        if beside.exists():
            return beside
    return path


def _validate_queries(config: PipelineConfig, given: set[str], where: str) -> None:
    """The ``queries`` section: its source, the keys that source takes, and their values (no model is loaded)."""
    from retrieval_kd.queries import CROP_METHODS, IMPORT_FORMATS, QueryFilters
    from retrieval_kd.queries.importing import detect_format
    from retrieval_kd.queries.pseudo_qrels import parse_positive

    q = config.queries
    if q.source not in _QUERY_KEYS:
        raise ConfigError(f"{where}: queries.source must be one of {', '.join(_QUERY_KEYS)}, got {q.source!r}")
    allowed = _QUERY_KEYS[q.source] | (_MADE_UP_KEYS if q.made_up else set())
    extra = sorted(given - allowed)
    if extra:
        owners = [s for s, keys in _QUERY_KEYS.items() if extra[0] in keys and s != "split"]
        if not q.made_up:
            why = ("is for queries made from the corpus; queries.source split trains on train_split's queries and "
                   "qrels (set queries.source: crop, generate or import)")
        else:
            why = f"is a key of queries.source {' or '.join(owners)}, not of {q.source}"
        raise ConfigError(f"{where}: queries.{extra[0]} {why}")
    if not q.made_up:
        return
    if q.positives == "qrels":
        raise ConfigError(f"{where}: queries.positives qrels: made-up queries have no judgements; use source, "
                          "teacher, teacher-topN or both")
    try:
        parse_positive(q.positives)
    except ConfigError as exc:
        raise ConfigError(f"{where}: queries.positives: {exc}") from None
    f = q.filters
    try:
        QueryFilters(f.min_words, f.max_words, f.dedupe, f.round_trip, f.round_trip_k)
    except ConfigError as exc:
        raise ConfigError(f"{where}: queries.filters: {exc}") from None
    if f.round_trip not in (None, "bm25"):
        _warn_unavailable(f.round_trip, where, "queries.filters.round_trip")
    if isinstance(q.seed, bool) or not isinstance(q.seed, int) or q.seed < 0:
        raise ConfigError(f"{where}: queries.seed must be a non-negative integer, got {q.seed!r}")
    for key in ("max_queries", "max_documents", "per_document"):
        if getattr(q, key) is not None and getattr(q, key) < 1:
            raise ConfigError(f"{where}: queries.{key} must be >= 1 (or null), got {getattr(q, key)}")
    if q.id_prefix is not None and (not q.id_prefix or len(q.id_prefix.split()) != 1 or q.id_prefix != q.id_prefix.strip()):
        raise ConfigError(f"{where}: queries.id_prefix {q.id_prefix!r} must be a word without spaces (it starts "
                          "every query id)")
    if q.source == "crop":
        if q.method not in CROP_METHODS:
            raise ConfigError(f"{where}: queries.method must be one of {', '.join(CROP_METHODS)}, got {q.method!r}")
        if not 0 <= q.remove_sentence <= 1:
            raise ConfigError(f"{where}: queries.remove_sentence must be a probability in [0, 1], got "
                              f"{q.remove_sentence}")
        if len(q.span_ratio) != 2 or not 0 < q.span_ratio[0] <= q.span_ratio[1] <= 1:
            raise ConfigError(f"{where}: queries.span_ratio must be [low, high] with 0 < low <= high <= 1, got "
                              f"{q.span_ratio}")
        if q.min_span_words < 1 or (q.max_span_words is not None and q.max_span_words < q.min_span_words):
            raise ConfigError(f"{where}: queries.min_span_words must be >= 1 and max_span_words >= it (got "
                              f"{q.min_span_words}, {q.max_span_words})")
    elif q.source == "generate":
        from retrieval_kd.queries import QueryGenerator, read_examples
        from retrieval_kd.queries.generate import GENERATOR_DTYPES

        if not q.model:
            raise ConfigError(f"{where}: queries.model: source generate needs a model (a causal LM such as "
                              "Qwen/Qwen2.5-7B-Instruct, or a doc2query model such as BeIR/query-gen-msmarco-t5-base-v1)")
        if q.dtype not in GENERATOR_DTYPES:
            raise ConfigError(f"{where}: queries.dtype must be one of {', '.join(GENERATOR_DTYPES)}, got {q.dtype!r}")
        if q.batch_size < 1:
            raise ConfigError(f"{where}: queries.batch_size must be >= 1, got {q.batch_size}")
        if q.examples is not None:
            path = config_path(config, q.examples)
            if not path.is_file():
                raise ConfigError(f"{where}: queries.examples: {path}: no such file")
            try:
                read_examples(path)
            except ValueError as exc:
                raise ConfigError(f"{where}: queries.examples: {exc}") from None
        try:  # its own range checks; no model is loaded
            QueryGenerator(q.model, [], q.prompt or "-", q.per_document or 3, q.max_new_tokens, q.temperature,
                           q.top_p, q.top_k, q.max_document_tokens)
        except ConfigError as exc:
            raise ConfigError(f"{where}: queries: {exc}") from None
        _warn_unavailable(q.model, where, "queries.model")
    else:  # import
        if not q.path:
            raise ConfigError(f"{where}: queries.path: source import needs the file (or GPL folder) to import")
        path = config_path(config, q.path)
        if not path.exists():
            raise ConfigError(f"{where}: queries.path: {path}: no such file or folder")
        if q.format not in IMPORT_FORMATS:
            raise ConfigError(f"{where}: queries.format must be one of {', '.join(IMPORT_FORMATS)}, got {q.format!r}")
        try:  # auto: what the name says, as the run reads it
            fmt = detect_format(path) if q.format == "auto" else q.format
        except ConfigError as exc:
            raise ConfigError(f"{where}: queries.path: {exc}") from None
        if (fmt == "gpl") != path.is_dir():
            raise ConfigError(f"{where}: queries.path: {path}: format {fmt} "
                              + ("reads a GPL data folder, not a file" if fmt == "gpl" else "reads a file, not a folder"))


def _validate(config: PipelineConfig, where: str, queries_keys: set[str] = frozenset()) -> None:
    from retrieval_kd.eval import validate_metrics
    from retrieval_kd.teachers import parse_teacher

    _folder_name(config.name, where, "name")
    try:
        check_dataset_ref(config.dataset)
    except ValueError as exc:
        raise ConfigError(f"{where}: dataset: {exc}") from None
    _validate_queries(config, queries_keys, where)
    splits = dataset_splits(config.dataset)
    if config.train_split not in splits:
        reasons = needs_train_split(config)
        if reasons:  # one line, before any work
            raise ConfigError(f"{where}: train_split: dataset {config.dataset!r} has no split {config.train_split!r} "
                              f"(its qrels splits: {', '.join(splits) or 'none'}); needed by "
                              + "; and by ".join(reasons))
        logger.info("%s: dataset %s has no split %r; nothing here needs it (label-free)", where, config.dataset,
                    config.train_split)
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
    if tc.fit_on not in FIT_ON:
        raise ConfigError(f"{where}: teachers.fit_on must be one of {', '.join(FIT_ON)}, got {tc.fit_on!r}")
    if tc.fit_on == "sources" and not config.queries.made_up:
        raise ConfigError(f"{where}: teachers.fit_on: sources needs made-up training queries (queries.source: crop, "
                          "generate or import); with the split's queries use fit_on: split")
    tc.fit_queries = _number(tc.fit_queries, where, "teachers.fit_queries", minimum=2)
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
    for key, value in (("encoding", config.encoding), ("teachers.encoding", tc.encoding)):
        _check_encoding(value, where, key)
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
            if section.weak_teacher not in WEAK_TEACHER:
                raise ConfigError(f"{where}: students.{kind}.weak_teacher must be one of {', '.join(WEAK_TEACHER)}, "
                                  f"got {section.weak_teacher!r}")
            if section.weak_teacher != "train" and kind != "dense":
                raise ConfigError(f"{where}: students.{kind}.weak_teacher: the teacher is checked against the dense "
                                  "student's start only; set it under students.dense")
            if section.weak_teacher != "train" and not (fits_weights(config) and tc.fit_on == "ict"):
                raise ConfigError(f"{where}: students.{kind}.weak_teacher: {section.weak_teacher} needs the "
                                  "label-free check of the teacher, which the ICT fit makes (teachers.fit_weights: "
                                  "true, teachers.fit_on: ict, two members or more, no fixed teachers.weights)")
            if section.weak_teacher != "train" and start_member(tc.members, student.model) is None:
                raise ConfigError(f"{where}: students.{kind}.weak_teacher: {section.weak_teacher} compares the "
                                  f"teacher with the student's start {student.model}, which no bi-encoder of "
                                  "teachers.members is")
            if kind == "dense":
                _check_code_sizes(config, student.model, where)


def fits_weights(cfg: PipelineConfig) -> bool:
    """Whether ``teach`` fits the ensemble's weights (on what: ``teachers.fit_on``)."""
    tc = cfg.teachers
    return tc.fit_weights and tc.weights is None and len(tc.members) > 1


def start_member(members: list[str], start: str) -> int | None:
    """The index of the first ``bi-encoder:`` spec of ``members`` that names the model ``start`` (the member the
    label-free check compares the teacher with), or None."""
    from retrieval_kd.models.resolve import same_model

    heads = (spec.split(",")[0].strip().partition(":") for spec in members)
    return next((i for i, (kind, _, name) in enumerate(heads)
                 if kind == "bi-encoder" and same_model(name.strip(), start)), None)


#: students.dense.weak_teacher: train anyway, or keep the start as the student (StudentSection)
WEAK_TEACHER = ("train", "keep-start")
_IVF_KINDS = ("ivfpq", "opq-ivfpq", "distill-vq")
_PQ_KINDS = ("pq", "ivfpq", "opq-ivfpq", "distill-vq")


def _check_encoding(value: str, where: str, key: str) -> None:
    """An ``encoding`` setting: one of the backends or ``auto``; a backend whose package is missing here is logged
    (the run will need it), not refused."""
    if value not in ENCODING_CHOICES:
        raise ConfigError(f"{where}: {key} must be one of {', '.join(ENCODING_CHOICES)}, got {value!r}")
    if value == "auto":
        return
    try:
        resolve_encoding(value, check=True)
    except UnavailableError as exc:
        logger.warning("%s: %s: %s (the run will need it)", where, key, exc)


@functools.cache
def resolved_encoding(setting: str, kind: str) -> Encoding:
    """The backend an ``encoding`` setting (``encoding``, ``teachers.encoding``) runs ``kind`` (``dense`` or
    ``sparse``) encoders with here: ``auto`` decided by this CPU's instruction sets. Logged once per process.

    A backend whose package is missing here resolves to instruction set ``unavailable`` (the dry run still plans;
    the stage that loads it raises :class:`~retrieval_kd.errors.UnavailableError` naming the package)."""
    try:
        chosen = resolve_encoding(setting, kind, check=False)  # auto logs its choice and the reason
    except UnavailableError as exc:
        logger.warning("encoding %s (%s encoders): %s", setting, kind, exc)
        return Encoding(setting, "unavailable", str(exc))
    if setting not in ("auto", "torch"):
        logger.info("encoding %s for %s encoders (instruction set %s)", chosen.backend, kind, chosen.isa or "-")
    return chosen


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
    q = config.queries
    if q.made_up:  # the queries stage's query set; positives and mixing as the section says unless `set:` does
        forced["data.queries"] = str(work / "queries" / "queries.jsonl")
    overrides = {**dict(section.set), **forced}
    overrides.setdefault("data.teacher", "ensemble")
    if q.made_up:
        overrides.setdefault("data.positives", q.positives)
        overrides.setdefault("data.mix_labeled", q.mix_labeled)
    for key in forced:
        if key in section.set and section.set[key] != forced[key]:
            raise ValueError(f"set: {key} is decided by the pipeline ({forced[key]})")
    loader = load_config if kind == "dense" else load_sparse_config
    return loader(path, overrides)


def current_check(cfg: PipelineConfig, teach_summary: dict) -> dict | None:
    """The teach stage's ``teacher_vs_start``, if it was made against the dense student's present start (None when
    there is none, no dense student, or the start changed since the stage ran)."""
    from retrieval_kd.models.resolve import same_model

    check = teach_summary.get("teacher_vs_start")
    if not check or cfg.students.dense is None:
        return None
    return check if same_model(check["start"], student_config(cfg, "dense").model) else None
