"""A set of training queries made from a corpus, with the provenance of each query: :class:`QuerySet`.

On disk it is two files, both written atomically (:class:`~retrieval_kd.data.formats.atomic_write`):

* ``queries.jsonl``: BEIR queries (``{"_id", "text"}`` per line), readable by any BEIR tool and by
  :func:`retrieval_kd.data.formats.read_queries`;
* ``queries.provenance.json`` beside it (:func:`sidecar_path`): how the queries were made (``method``, its
  ``settings``, the ``model`` name and revision where one was used, the ``prompt_sha256``, the ``seed``), the
  corpus they come from, the ``source`` document of every query, the character span removed from the source for
  inverse-cloze queries (``removed``), counts kept and dropped per reason, the filters applied, and the sha256 of
  ``queries.jsonl``, so a sidecar is never read with another queries file.

The queries file is written first and the sidecar last: a run killed between the two leaves a sidecar whose
digest does not match, which :func:`read_query_set` refuses (and the writer's rerun replaces).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval_kd.data.formats import DataFormatError, atomic_write, read_queries
from retrieval_kd.errors import IntegrityError

logger = logging.getLogger(__name__)

__all__ = ["FORMAT", "QuerySet", "collect_queries", "merge_query_sets", "query_id", "read_query_set", "sidecar_path",
           "write_query_set"]

FORMAT = "rkd-queries/1"
_SPACE = re.compile(r"\s+")


def query_id(prefix: str, doc_id: str, n: int) -> str:
    """``<prefix>-<doc id>-<n>``: the ``n``-th query made from a document (whitespace in the id becomes ``_``)."""
    return f"{prefix}-{_SPACE.sub('_', doc_id.strip())}-{n}"


def collect_queries(made, prefix: str) -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
    """``(queries, sources, dropped)`` from ``(doc_id, [query texts])`` pairs: ids by :func:`query_id` (the n-th
    text of a document gets ``n``, empty ones included, so ids do not shift when one is dropped), whitespace
    collapsed, empty texts dropped (counted as ``empty``).

    Raises:
        DataFormatError: two documents whose ids differ only in whitespace would give the same query id.
    """
    queries: dict[str, str] = {}
    sources: dict[str, str] = {}
    empty = 0
    for doc_id, texts in made:
        for n, text in enumerate(texts):
            text = " ".join(str(text).split())
            if not text:
                empty += 1
                continue
            qid = query_id(prefix, doc_id, n)
            if qid in sources and sources[qid] != doc_id:
                raise DataFormatError(f"documents {sources[qid]!r} and {doc_id!r} give the same query id {qid!r}; "
                                      "ids that differ only in whitespace cannot be told apart in TREC files")
            queries[qid], sources[qid] = text, doc_id
    return queries, sources, {"empty": empty} if empty else {}


def merge_query_sets(sets: Sequence[QuerySet]) -> QuerySet:
    """One query set holding the queries of ``sets`` in order (e.g. a generation run and its extension to the rest
    of the corpus, ``exclude_documents``). Counts: ``candidates`` and ``dropped`` summed, ``documents`` the distinct
    source documents of the merged queries, ``corpus_documents`` the largest; each set's own provenance, counts and
    filters are kept under ``provenance["merged"]``.

    Raises:
        IntegrityError: the sets come from different corpora, or a query id is in two of them.
    """
    if not sets:
        raise ValueError("no query sets to merge")
    if len(sets) == 1:
        return sets[0]
    corpora = {s.corpus for s in sets if s.corpus is not None}
    if len(corpora) > 1:
        raise IntegrityError(f"the query sets were made from different corpora ({', '.join(sorted(corpora))})")
    queries, sources, removed = {}, {}, {}
    for part in sets:
        for qid, text in part.queries.items():
            if qid in queries:
                raise IntegrityError(f"query id {qid!r} is in two of the sets to merge (the same file twice, or two "
                                     "runs with one id prefix: give them different ones, --id-prefix)")
            queries[qid], sources[qid] = text, part.sources[qid]
        removed.update(part.removed)
    dropped: dict[str, int] = {}
    for part in sets:
        for reason, n in (part.counts.get("dropped") or {}).items():
            dropped[reason] = dropped.get(reason, 0) + n
    counts = {"documents": len(set(sources.values())),
              "corpus_documents": max((s.counts.get("corpus_documents", 0) for s in sets), default=0),
              "candidates": sum(s.counts.get("candidates", len(s)) for s in sets), "dropped": dropped,
              "kept": len(queries)}
    methods = {s.method for s in sets}
    provenance = {"merged": [{"method": s.method, "provenance": s.provenance, "counts": s.counts,
                              "filters": s.filters} for s in sets]}
    return QuerySet(queries, sources, methods.pop() if len(methods) == 1 else "mixed", provenance, counts,
                    removed=removed, corpus=corpora.pop() if corpora else None)


def sidecar_path(path: str | os.PathLike) -> Path:
    """``queries.jsonl`` -> ``queries.provenance.json`` (any other name gets ``.provenance.json`` appended)."""
    path = Path(path)
    name = path.name
    for suffix in (".gz", ".jsonl"):
        name = name.removesuffix(suffix)
    return path.with_name(f"{name}.provenance.json")


@dataclass
class QuerySet:
    """Queries and where they come from.

    Attributes:
        queries: query id -> text, in the order they were made (documents in corpus order).
        sources: query id -> the id of the document it was made from (its pseudo-positive).
        method: ``generate``, ``crop-title``, ``crop-sentence``, ``crop-span``, ``import``, or ``mixed`` (sets of
            several methods merged, :func:`merge_query_sets`).
        provenance: settings, model name and revision, prompt hash, seed: what reproduces the set.
        counts: ``documents`` used, ``skipped_documents`` per reason, ``candidates`` made, ``kept``, and
            ``dropped`` per reason (``empty``, ``example_copy``, ``too_short``, ``too_long``, ``duplicate``,
            ``round_trip``).
        filters: the filters applied, in order, with their settings and drop counts.
        removed: query id -> ``[start, end)`` character span of the source's ``text`` that was the query and is
            left out of its positive (inverse cloze task with removal); absent for other queries.
        corpus: the corpus key (:attr:`retrieval_kd.data.corpus.Corpus.store_path` name: file and content hash).
    """

    queries: dict[str, str]
    sources: dict[str, str]
    method: str
    provenance: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    filters: list[dict[str, Any]] = field(default_factory=list)
    removed: dict[str, list[int]] = field(default_factory=dict)
    corpus: str | None = None

    def __post_init__(self) -> None:
        missing = [q for q in self.queries if q not in self.sources]
        if missing:
            raise ValueError(f"{len(missing)} queries have no source document (e.g. {missing[0]!r})")
        self.counts.setdefault("kept", len(self.queries))

    def __len__(self) -> int:
        return len(self.queries)

    def subset(self, keep: Mapping[str, object] | set[str] | list[str]) -> QuerySet:
        """The queries whose ids are in ``keep``, in this set's order (counts and filters are the caller's)."""
        keep = set(keep)
        ids = [q for q in self.queries if q in keep]
        return QuerySet({q: self.queries[q] for q in ids}, {q: self.sources[q] for q in ids}, self.method,
                        dict(self.provenance), {**self.counts, "kept": len(ids)}, list(self.filters),
                        {q: s for q, s in self.removed.items() if q in keep}, self.corpus)

    def positive_texts(self, corpus) -> dict[str, str]:
        """``{qid: text}`` of the positives that differ from the corpus document: the source without the
        removed span (title kept, as :meth:`Corpus.texts` joins them)."""
        out = {}
        for qid, (start, end) in self.removed.items():
            doc = corpus[self.sources[qid]]
            rest = " ".join((doc["text"][:start] + " " + doc["text"][end:]).split())
            out[qid] = f"{doc['title']} {rest}".strip() if doc["title"] else rest
        return out

    def check_corpus(self, collection, where: str = "queries") -> None:
        """Refuse a query set made from another corpus (its key or a source id missing from ``collection``)."""
        corpus = collection.corpus
        if corpus is None:
            raise ValueError(f"{where}: dataset {collection.name!r} has no corpus for the queries' sources")
        if self.corpus is not None and self.corpus != corpus.store_path.name:
            raise IntegrityError(f"{where}: the queries were made from corpus {self.corpus}, not from "
                                 f"{collection.name}'s ({corpus.store_path.name}); make them again for this corpus")
        docs = sorted(set(self.sources.values()))
        found = corpus.has(docs)
        if not found.all():
            bad = docs[int((~found).argmax())]
            raise IntegrityError(f"{where}: source document {bad!r} ({int((~found).sum())} ids) is not in "
                                 f"{corpus.path}; the queries were made for another corpus")

    def sidecar(self, queries_sha256: str) -> dict[str, Any]:
        return {"format": FORMAT, "method": self.method, "corpus": self.corpus, "queries_sha256": queries_sha256,
                "provenance": self.provenance, "counts": self.counts, "filters": self.filters,
                "sources": self.sources, "removed": self.removed}


def write_query_set(query_set: QuerySet, path: str | os.PathLike) -> Path:
    """Write ``queries.jsonl`` and its provenance sidecar atomically (queries first, sidecar last)."""
    from retrieval_kd.utils.fs import sha256_file

    path = Path(path)
    if not query_set.queries:
        raise ValueError(f"{path}: no query was kept (counts: {json.dumps(query_set.counts)}); relax the filters "
                         "or check the documents and the model")
    bad = next((q for q in query_set.queries if not q or q != q.strip() or len(q.split()) != 1), None)
    if bad is not None:
        raise DataFormatError(f"{path}: cannot write query id {bad!r}: ids are non-empty and hold no whitespace "
                              "(they go into TREC run files)")
    for target in (path, sidecar_path(path)):  # both refused before either is written: never a file without the other
        if target.is_dir():
            raise IsADirectoryError(21, "Is a directory", str(target))
    with atomic_write(path) as fh:
        for qid, text in query_set.queries.items():
            fh.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
    with atomic_write(sidecar_path(path)) as fh:
        json.dump(query_set.sidecar(sha256_file(path)), fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    logger.info("wrote %s: %d queries (%s)", path, len(query_set), query_set.method)
    return path


def read_query_set(path: str | os.PathLike, collection=None) -> QuerySet:
    """A :class:`QuerySet` from ``queries.jsonl`` and its sidecar; with ``collection``, checked to be made from its
    corpus (:meth:`QuerySet.check_corpus`).

    Raises:
        FileNotFoundError: no such file, or no sidecar (a plain queries file has no sources: import it with
            ``rkd queries import``).
        IntegrityError: the sidecar was written for another queries file, or names other queries; the queries were
            made from another corpus than ``collection``'s.
        DataFormatError: a torn or malformed sidecar.
    """
    from retrieval_kd.utils.fs import sha256_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such queries file", str(path))
    side = sidecar_path(path)
    if not side.is_file():
        raise FileNotFoundError(f"{side}: no provenance sidecar beside {path}; queries made by `rkd queries` have "
                                "one (a plain queries file with source documents: `rkd queries import`)")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataFormatError(f"{side}: not valid JSON ({exc}); make the queries again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataFormatError(f"{side}: not a retrieval-kd queries sidecar (format {FORMAT!r} expected)")
    if meta.get("queries_sha256") != sha256_file(path):
        raise IntegrityError(f"{side}: written for another version of {path} (sha256 differs); the queries file "
                             "was changed or its writer was killed; make the queries again")
    queries = read_queries(path)
    sources = meta.get("sources") or {}
    if set(sources) != set(queries):
        raise IntegrityError(f"{side}: names the sources of other queries than {path} holds")
    query_set = QuerySet(queries, {q: sources[q] for q in queries}, meta["method"], meta.get("provenance") or {},
                         meta.get("counts") or {}, meta.get("filters") or [], meta.get("removed") or {},
                         meta.get("corpus"))
    if collection is not None:
        query_set.check_corpus(collection, str(path))
    return query_set
