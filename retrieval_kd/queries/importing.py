"""Queries generated elsewhere, with their source documents, read into a :class:`QuerySet`.

Formats (``fmt``; ``auto`` tells them apart by the path):

* ``beir``: BEIR's published generated queries (the ``BeIR/<name>-generated-queries`` data sets): JSON lines
  ``{"_id", "title", "text", "query"}``, ``_id`` the source document; a document's queries get ids
  ``<prefix>-<doc>-<n>`` in file order;
* ``gpl``: what GPL's query generation writes into its data folder: ``<prefix>-queries.jsonl`` (BEIR queries) and
  ``<prefix>-qrels/train.tsv`` (each query's source document); ``prefix`` is GPL's ``qgen_prefix`` (``qgen``);
  the query ids are kept;
* ``tsv``: ``qid<TAB>query<TAB>doc_id`` per line; the query ids are kept.

Every source must be a document of the collection's corpus; a bad line, a duplicate query id, a query without a
source or a source missing from the corpus raises :class:`DataFormatError` naming the file and line (or id).

References:
    Thakur, N., et al. (2021). BEIR: A Heterogeneous Benchmark for Zero-shot Evaluation of Information Retrieval
    Models. NeurIPS Datasets and Benchmarks.
    Wang, K., et al. (2022). GPL: Generative Pseudo Labeling for Unsupervised Domain Adaptation of Dense
    Retrieval. NAACL.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from retrieval_kd.data.formats import DataFormatError, iter_jsonl, iter_lines, read_qrels, read_queries
from retrieval_kd.errors import ConfigError
from retrieval_kd.queries.filters import QueryFilters, apply_filters
from retrieval_kd.queries.query_set import QuerySet, query_id

logger = logging.getLogger(__name__)

__all__ = ["IMPORT_FORMATS", "detect_format", "import_queries"]

IMPORT_FORMATS = ("auto", "beir", "gpl", "tsv")


def detect_format(path: Path) -> str:
    """``gpl`` for a folder, else ``tsv`` or ``beir`` by the file name (a ConfigError when it says neither)."""
    if path.is_dir():
        return "gpl"
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".tsv", ".txt")):
        return "tsv"
    if name.endswith((".jsonl", ".json")):
        return "beir"
    raise ConfigError(f"{path}: cannot tell its format from the name; pass the format (beir, gpl or tsv)")


def _read_beir(path: Path, prefix: str):
    per_doc: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        doc, query = obj.get("_id"), obj.get("query")
        if isinstance(doc, bool) or not isinstance(doc, (str, int)) or not str(doc).strip() or \
                not isinstance(query, str):
            raise DataFormatError(f"{path}:{lineno}: a generated query needs '_id' (its source document) and a "
                                  f"string 'query', got keys {sorted(obj)[:10]}")
        doc = str(doc)
        n = per_doc.get(doc, 0)
        per_doc[doc] = n + 1
        yield f"{path}:{lineno}", query_id(prefix, doc, n), query, doc


def _read_tsv(path: Path):
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3 or not parts[0].strip() or not parts[2].strip():
            raise DataFormatError(f"{path}:{lineno}: expected 'qid<TAB>query<TAB>doc_id', got {line[:80]!r}")
        yield f"{path}:{lineno}", parts[0].strip(), parts[1], parts[2].strip()


def _read_gpl(folder: Path, prefix: str):
    queries_file, qrels_file = folder / f"{prefix}-queries.jsonl", folder / f"{prefix}-qrels" / "train.tsv"
    for f in (queries_file, qrels_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: not found; a GPL data folder holds {prefix}-queries.jsonl and "
                                    f"{prefix}-qrels/train.tsv (another prefix: --prefix)")
    queries, qrels = read_queries(queries_file), read_qrels(qrels_file)
    for qid, text in queries.items():
        docs = sorted(d for d, g in qrels.get(qid, {}).items() if g > 0)
        if len(docs) != 1:
            raise DataFormatError(f"{qrels_file}: query {qid!r} has {len(docs)} source documents; GPL gives each "
                                  "generated query exactly one")
        yield f"{queries_file} (query {qid!r})", qid, text, docs[0]
    extra = sorted(set(qrels) - set(queries))
    if extra:
        raise DataFormatError(f"{qrels_file}: query {extra[0]!r} ({len(extra)} in all) is not in {queries_file}")


def import_queries(path: str | os.PathLike, collection, fmt: str = "auto", prefix: str = "qgen",
                   id_prefix: str = "gen", filters: QueryFilters | None = None) -> QuerySet:
    """A :class:`QuerySet` from a generated-queries file or GPL folder (see the module docstring).

    Args:
        path: the file (``beir``, ``tsv``) or GPL data folder (``gpl``).
        collection: the collection whose corpus the sources belong to.
        fmt: ``auto``, ``beir``, ``gpl`` or ``tsv``.
        prefix: GPL's file prefix (``qgen``).
        id_prefix: ``beir``: query ids are ``<id_prefix>-<doc>-<n>``.
        filters: applied to the imported queries.
    """
    path = Path(path)
    if fmt not in IMPORT_FORMATS:
        raise ConfigError(f"import format {fmt!r}: use one of {', '.join(IMPORT_FORMATS)}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    fmt = detect_format(path) if fmt == "auto" else fmt
    rows = list(_read_gpl(path, prefix) if fmt == "gpl" else _read_tsv(path) if fmt == "tsv"
                else _read_beir(path, id_prefix))
    if not rows:
        raise DataFormatError(f"{path}: holds no queries; a {fmt} file needs at least one")
    queries, sources, where = {}, {}, {}
    empty = 0
    for place, qid, text, doc in rows:
        if len(qid.split()) != 1:
            raise DataFormatError(f"{place}: query id {qid!r} holds whitespace; ids go into TREC files")
        if qid in where:
            raise DataFormatError(f"{place}: duplicate query id {qid!r} (first at {where[qid]})")
        where[qid] = place
        text = " ".join(text.split())
        if not text:
            empty += 1
            continue
        queries[qid], sources[qid] = text, doc
    docs = sorted(set(sources.values()))
    found = collection.corpus.has(docs)
    if not found.all():
        bad = docs[int((~found).argmax())]
        first = next(q for q in queries if sources[q] == bad)
        raise DataFormatError(f"{where[first]}: source document {bad!r} is not in {collection.corpus.path} "
                              f"({int((~found).sum())} of {len(docs)} sources missing); import queries made for "
                              "this corpus")
    counts = {"documents": len(docs), "candidates": len(rows), "dropped": {"empty": empty} if empty else {}}
    provenance = {"settings": {"file": str(path), "format": fmt, "prefix": prefix if fmt == "gpl" else None,
                               "id_prefix": id_prefix if fmt == "beir" else None}}
    query_set = QuerySet(queries, sources, "import", provenance, counts, corpus=collection.corpus.store_path.name)
    return apply_filters(query_set, filters, collection)
