"""A collection: corpus, queries and qrels per split, with the evaluation conventions of its dataset.

:func:`load_collection` resolves a dataset reference:

* a registered name (``scifact``, ``trec-dl-2019-passage``, ``cranfield``, ``msmarco-passage-dl19``, ...): its
  manifest in ``data/manifests`` says which files it has, and each file is taken from the first place that has
  it: the mirror folder ``$RKD_DATA_MIRROR/<mirror_folder>/`` (read only), the cache ``data/cache/<name>/``,
  or the official URL (checksum verified, then cached). A file found in the mirror or the cache is checked
  against the manifest's sha256 too (over its un-gzipped content; the digest is remembered by path, size and
  mtime in ``data/cache/file-digests.json``, so a large file is hashed once): a cut or altered copy raises
  :class:`~retrieval_kd.errors.IntegrityError`;
* a local folder in BEIR layout (``corpus.jsonl[.gz]``, ``queries.jsonl``, ``qrels/<split>.tsv``);
* an ir_datasets id with the ``irds:`` prefix (``irds:beir/scifact/test``), exported once into the cache.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from retrieval_kd.data.corpus import Corpus
from retrieval_kd.data.download import ChecksumError, URLError, download, extract_zip
from retrieval_kd.data.formats import DataFormatError, Qrels, read_qrels, read_queries
from retrieval_kd.data.irds import irds_folder
from retrieval_kd.data.registry import Conventions, FileSpec, Manifest, get_manifest, list_datasets
from retrieval_kd.errors import IntegrityError, UnavailableError
from retrieval_kd.paths import cache_dir
from retrieval_kd.utils.fs import sha256_memo

logger = logging.getLogger(__name__)

__all__ = ["Collection", "DatasetUnavailableError", "load_beir_folder", "load_collection", "load_irds", "MIRROR_ENV"]

MIRROR_ENV = "RKD_DATA_MIRROR"
_DIGESTS = "file-digests.json"


class DatasetUnavailableError(UnavailableError, FileNotFoundError):
    """A dataset file is in no mirror, not cached, and could not be downloaded."""


@dataclass
class Collection:
    """Corpus, queries and per-split qrels of one dataset.

    Attributes:
        name: the reference it was loaded from.
        corpus: the :class:`Corpus`, or None for topic/qrels-only datasets (MS MARCO DL topics).
        queries_path: the queries file.
        qrels_paths: split -> qrels file.
        conventions: relevance level, identical-id removal and default metrics.
        manifest: the registry entry, for registered datasets.
    """

    name: str
    corpus: Corpus | None
    queries_path: Path | None
    qrels_paths: dict[str, Path]
    conventions: Conventions = field(default_factory=Conventions)
    manifest: Manifest | None = None

    def source_of(self, path: str | os.PathLike) -> Path | None:
        """The file of this collection that writing ``path`` would replace or shadow, else None: its corpus, queries
        or a qrels file, their gzipped / plain twins, and, beside them, any name the BEIR layout looks for
        (``corpus.jsonl[.gz]``, ``queries.jsonl[.gz]``, ``queries.tsv``, ``qrels/*.tsv*``), which a later load
        would read in their place."""
        target = Path(path).resolve()
        anchors = [Path(f) for f in (getattr(self.corpus, "path", None), self.queries_path) if f is not None]
        files = anchors + [Path(f) for f in self.qrels_paths.values()]
        for f in files:
            if target in {v.resolve() for v in _variants(f)}:
                return f
        for f in anchors:  # the folders the layout reads the corpus and queries from, and its qrels folder
            folder = f.resolve().parent
            if target.parent == folder and target.name in _LAYOUT_NAMES:
                return f
            if target.parent == folder / "qrels" and ".tsv" in target.name:
                return next(iter(self.qrels_paths.values()), f)
        return None

    @property
    def splits(self) -> list[str]:
        return list(self.qrels_paths)

    @cached_property
    def all_queries(self) -> dict[str, str]:
        if self.queries_path is None:
            raise DatasetUnavailableError(f"dataset {self.name!r} has no queries file")
        return read_queries(self.queries_path)

    def _check_split(self, split: str) -> None:
        if split not in self.qrels_paths:
            raise KeyError(f"dataset {self.name!r} has no split {split!r}; its splits: {', '.join(self.splits)}")

    def qrels(self, split: str) -> Qrels:
        """Judgements of a split. Judged docs missing from the corpus are counted in a warning (once)."""
        self._check_split(split)
        if split not in self._qrels_cache:
            qrels = read_qrels(self.qrels_paths[split])
            if self.corpus is not None:
                judged = sorted({d for docs in qrels.values() for d in docs})
                missing = len(judged) - int(self.corpus.has(judged).sum())
                if missing:
                    logger.warning(
                        "%s: %d of %d judged doc ids in split %r are not in the corpus %s",
                        self.name, missing, len(judged), split, self.corpus.path,
                    )
            unknown = set(qrels) - set(self.all_queries)
            if unknown:
                logger.warning(
                    "%s: %d query ids in the %r qrels have no query text (e.g. %r)",
                    self.name, len(unknown), split, sorted(unknown)[0],
                )
            self._qrels_cache[split] = qrels
        return self._qrels_cache[split]

    def conventions_for(self, split: str) -> Conventions:
        """The conventions ``split`` is evaluated by, with ``ignore_identical_ids`` decided when it is None.

        BEIR's evaluation drops a query's own id from its results because in ArguAna and Quora the queries are
        documents of the corpus, with the same id and text, which every retriever would rank first. A folder loaded
        by path says nothing, and dropping by id alone would be wrong where ids merely coincide (Cranfield's or
        CISI's numbered queries and documents). So the data decides: the query's own id is dropped when most of the
        split's queries whose id is also a document id are that document (their words, at least
        ``MIN_SELF_WORDS`` of them, appear in it in order as whole words). The qrels still win: a self match they
        judge relevant is never dropped (:func:`~retrieval_kd.eval.evaluate.evaluate`)."""
        conv = self.conventions
        if conv.ignore_identical_ids is not None:
            return conv
        if split not in self._self_rule:
            self._self_rule[split] = self._queries_are_documents(split)
        return dataclasses.replace(conv, ignore_identical_ids=self._self_rule[split])

    @cached_property
    def _self_rule(self) -> dict[str, bool]:
        return {}

    def _queries_are_documents(self, split: str) -> bool:
        if self.corpus is None:
            return False
        texts = self.queries(split)
        ids = list(texts)
        shared = [q for q, known in zip(ids, self.corpus.has(ids)) if known]
        if not shared:
            return False
        same = sum(_is_inside(texts[q], d) for q, d in zip(shared, self.corpus.texts(shared)))
        decided = 2 * same > len(shared)
        logger.info("%s/%s: %d of the %d queries whose id is a document id are that document; their own id is %s "
                    "their results", self.name, split, same, len(shared),
                    "dropped from" if decided else "kept in")
        return decided

    def queries(self, split: str | None = None) -> dict[str, str]:
        """Queries judged in ``split`` (as BEIR's loader returns them), or all queries when split is None."""
        if split is None:
            return dict(self.all_queries)
        qrels = self.qrels(split)
        return {qid: text for qid, text in self.all_queries.items() if qid in qrels}

    @cached_property
    def _qrels_cache(self) -> dict[str, Qrels]:
        return {}

    def __repr__(self) -> str:
        n = "no corpus" if self.corpus is None else str(self.corpus.path)
        return f"Collection({self.name!r}, {n}, splits={self.splits})"


# ---------------------------------------------------------------------------------------------------------------
def load_collection(ref: str, mirror: str | os.PathLike | None = None) -> Collection:
    """Resolve a dataset reference (registered name, BEIR folder, or ``irds:`` id) to a :class:`Collection`.

    Args:
        ref: the reference.
        mirror: a mirror folder; defaults to ``$RKD_DATA_MIRROR``.

    Raises:
        DatasetUnavailableError: a file is in no mirror or cache and cannot be downloaded.
        KeyError: the reference is neither registered, nor a folder, nor an ir_datasets id.
    """
    if ref.startswith("irds:"):
        return load_irds(ref[len("irds:"):])
    if ref in list_datasets():
        return _load_registered(get_manifest(ref), mirror)
    path = Path(ref)
    if path.is_dir():
        return load_beir_folder(path)
    raise KeyError(
        f"unknown dataset {ref!r}: not a registered name ({', '.join(list_datasets())}), "
        "not a folder in BEIR layout, and not an ir_datasets id (irds:...)"
    )


def load_irds(dataset_id: str, dataset=None) -> Collection:
    """An ir_datasets id (without ``irds:``) as a collection, from its export in the cache (``dataset`` may be
    passed in directly, e.g. in tests). BEIR's collections (``beir/...``) follow its identical-id rule, decided from
    the data; the others TREC's, which drops nothing."""
    folder = irds_folder(dataset_id, dataset)
    name = f"irds:{dataset_id}"
    if (folder / "corpus.jsonl").exists() and (folder / "qrels").exists():
        beir = dataset_id.startswith("beir/")
        return load_beir_folder(folder, name, Conventions(ignore_identical_ids=None if beir else False))
    corpus = Corpus(folder / "corpus.jsonl") if (folder / "corpus.jsonl").exists() else None
    qrels = {p.stem: p for p in (folder / "qrels").glob("*.tsv")} if (folder / "qrels").exists() else {}
    queries = folder / "queries.jsonl" if (folder / "queries.jsonl").exists() else None
    return Collection(name, corpus, queries, qrels)


def load_beir_folder(path: str | os.PathLike, name: str | None = None,
                     conventions: Conventions | None = None) -> Collection:
    """A folder in BEIR layout: ``corpus.jsonl[.gz]``, ``queries.jsonl``, ``qrels/<split>.tsv``.

    ``conventions`` default to BEIR's with the identical-id rule decided from the data
    (:meth:`Collection.conventions_for`)."""
    path = Path(path)
    corpus = _first_existing([path / name for name in _LAYOUT_NAMES[:2]])
    queries = _first_existing([path / name for name in _LAYOUT_NAMES[2:]])
    qrels = {p.name.split(".")[0]: p for p in sorted((path / "qrels").glob("*.tsv*"))}
    if corpus is None or queries is None or not qrels:
        raise DatasetUnavailableError(
            f"{path} is not in BEIR layout: it needs corpus.jsonl[.gz], queries.jsonl and qrels/<split>.tsv "
            f"(found corpus={corpus is not None}, queries={queries is not None}, qrels splits={list(qrels)})"
        )
    return Collection(name or str(path), Corpus(corpus), queries, qrels,
                      conventions or Conventions(ignore_identical_ids=None))


#: the file names :func:`load_beir_folder` looks for beside ``qrels/``
_LAYOUT_NAMES = ("corpus.jsonl", "corpus.jsonl.gz", "queries.jsonl", "queries.jsonl.gz", "queries.tsv")


#: the fewest words a query needs to count as its same-id document's text (a word or two occur anywhere)
MIN_SELF_WORDS = 3
_WORD = re.compile(r"\w+")


def _is_inside(query: str, document: str) -> bool:
    """Whether ``query``'s words (at least :data:`MIN_SELF_WORDS`) appear in ``document`` in order, as whole words
    (case and punctuation aside)."""
    words = _WORD.findall(query.casefold())
    return len(words) >= MIN_SELF_WORDS and f" {' '.join(words)} " in f" {' '.join(_WORD.findall(document.casefold()))} "


def _first_existing(paths: list[Path]) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def _variants(path: Path) -> list[Path]:
    """A file and its gzipped / un-gzipped twin."""
    if path.suffix == ".gz":
        return [path, path.with_suffix("")]
    return [path, path.with_name(path.name + ".gz")]


def _mirror_root(mirror: str | os.PathLike | None) -> Path | None:
    mirror = mirror or os.environ.get(MIRROR_ENV)
    return Path(mirror) if mirror else None


def _resolve_file(manifest: Manifest, spec: FileSpec, mirror: Path | None) -> Path:
    candidates = []
    if mirror is not None:
        candidates += _variants(mirror / (manifest.mirror_folder or manifest.name) / spec.path)
    cached = cache_dir() / manifest.name / spec.path
    candidates += _variants(cached)
    found = _first_existing(candidates)
    if found is not None:
        return _verify(manifest, spec, found, mirror)
    url = spec.url or (manifest.archive or {}).get("url")
    try:
        if spec.url:
            return download(spec.url, cached, sha256=spec.sha256)
        if manifest.archive:
            archive = manifest.archive
            zip_path = cache_dir() / manifest.name / Path(archive["url"]).name
            if not zip_path.exists():
                download(archive["url"], zip_path, md5=archive.get("md5"), sha256=archive.get("sha256"), gunzip=False)
            extract_zip(zip_path, cache_dir() / manifest.name, archive.get("member_prefix", ""))
            found = _first_existing(_variants(cached))
            if found is None:
                raise DatasetUnavailableError(f"{archive['url']} does not contain {spec.path}")
            if spec.sha256:
                from retrieval_kd.data.download import sha256_of_content

                if sha256_of_content(found) != spec.sha256:
                    found.unlink()
                    raise ChecksumError(f"{spec.path} from {archive['url']}: sha256 differs from the manifest")
            return found
    except (URLError, OSError, TimeoutError) as exc:
        if isinstance(exc, (DatasetUnavailableError, ChecksumError)):
            raise
        reason = str(getattr(exc, "reason", exc))
        raise DatasetUnavailableError(_unavailable_message(manifest, spec, mirror, url, reason)) from exc
    raise DatasetUnavailableError(_unavailable_message(manifest, spec, mirror, None, "no official download exists"))


def _verify(manifest: Manifest, spec: FileSpec, found: Path, mirror: Path | None) -> Path:
    """A file found in the mirror or the cache must have the content the manifest records."""
    if not spec.sha256:
        return found
    try:
        actual = sha256_memo(found, cache_dir() / _DIGESTS, gunzip=True)
    except (EOFError, OSError, zlib.error) as exc:  # a truncated or corrupt .gz
        if isinstance(exc, FileNotFoundError):
            raise
        raise DataFormatError(f"{found}: cannot read its content to check it against the manifest of "
                              f"{manifest.name!r} ({exc}); replace the file with the official one") from None
    expected = spec.sha256.lower()
    if actual == expected:
        return found
    in_mirror = mirror is not None and found.resolve().is_relative_to(mirror.resolve())
    fix = (f"replace it in the mirror with the official file (or unset {MIRROR_ENV})" if in_mirror
           else "delete it and run again to fetch it anew")
    raise IntegrityError(f"{found}: content sha256 {actual} differs from {expected}, which the manifest of "
                         f"{manifest.name!r} records for {spec.path}; the file is cut, altered or another version: "
                         f"{fix}")


def _unavailable_message(manifest: Manifest, spec: FileSpec, mirror: Path | None, url: str | None, reason: str) -> str:
    folder = manifest.mirror_folder or manifest.name
    where = f"the mirror {mirror} has no {folder}/{spec.path}" if mirror else f"{MIRROR_ENV} is not set"
    lines = [
        f"dataset {manifest.name!r}: cannot get {spec.path}: {where}, it is not cached in "
        f"{cache_dir() / manifest.name}, and the download failed.",
        f"  official URL: {url or '(none)'} ({reason})",
        f"  to work offline, point {MIRROR_ENV} at a folder holding {folder}/{spec.path} in BEIR layout, "
        f"e.g. export {MIRROR_ENV}=/path/to/mirror",
    ]
    if spec.alternative:
        lines.append(f"  online, the same data is available as {spec.alternative}")
    return "\n".join(lines)


def _load_registered(manifest: Manifest, mirror: str | os.PathLike | None) -> Collection:
    root = _mirror_root(mirror)
    corpus = None
    if manifest.corpus is not None:
        corpus = Corpus(_resolve_file(manifest, manifest.corpus, root))
    queries = _resolve_file(manifest, manifest.queries, root) if manifest.queries else None
    qrels = {split: _resolve_file(manifest, spec, root) for split, spec in manifest.qrels.items()}
    return Collection(manifest.name, corpus, queries, qrels, manifest.conventions, manifest)
