"""The documents queries are made from: a corpus, or a seeded sample of it, without documents that hold no text."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from retrieval_kd.data.formats import DataFormatError
from retrieval_kd.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["DocumentSelection", "select_documents"]


@dataclass
class DocumentSelection:
    """Attributes:
    ids: the chosen document ids, in corpus order.
    total: documents in the corpus.
    skipped: reason -> ids left out (``no_text``: title and text both empty, with ``skip_empty``; ``excluded``:
        named by ``exclude``).
    """

    ids: list[str]
    total: int
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def counts(self) -> dict:
        return {"documents": len(self.ids), "corpus_documents": self.total,
                "skipped_documents": {reason: len(ids) for reason, ids in self.skipped.items() if ids}}


def _lines_of(path, doc_id: str, count: int = 1) -> list[int]:
    """The first ``count`` lines of ``path`` holding document ``doc_id`` (for error messages)."""
    from retrieval_kd.data.formats import iter_jsonl

    lines = []
    for lineno, obj in iter_jsonl(path):
        if str(obj.get("_id")) == doc_id:
            lines.append(lineno)
            if len(lines) == count:
                break
    return lines


def _line_of(path, doc_id: str) -> int | None:
    return next(iter(_lines_of(path, doc_id)), None)


def select_documents(collection, max_documents: int | None = None, seed: int = 0,
                     skip_empty: bool = False, exclude: Collection[str] | None = None) -> DocumentSelection:
    """The documents of ``collection`` to make queries from.

    Args:
        max_documents: a seeded random sample of this many documents (kept in corpus order); None: all.
        seed: the sample's seed.
        skip_empty: leave out documents whose title and text are both empty (counted); without it such a
            document is an error naming the corpus file, line and id.
        exclude: document ids to leave out before sampling (counted): e.g. the sources of an earlier query set's
            kept queries, to extend it to the documents it has no query for. A mapping id -> where it comes from (a
            file) names those origins in the error. Ids not in the corpus are ignored.

    Raises:
        DataFormatError: an empty corpus, a duplicate document id, a document without text (unless ``skip_empty``),
            or no document with text.
        ConfigError: ``exclude`` leaves no document.
    """
    corpus = collection.corpus
    if corpus is None:
        raise ValueError(f"dataset {collection.name!r} has no corpus to make queries from")
    ids, empty, seen = [], [], set()
    for doc in corpus:  # an empty corpus raises DataFormatError naming the file
        if doc["_id"] in seen:  # its queries would be credited to one of the two documents
            first, again = _lines_of(corpus.path, doc["_id"], 2)
            raise DataFormatError(f"{corpus.path}:{again}: duplicate document id {doc['_id']!r} (first on line "
                                  f"{first}); ids must be unique")
        seen.add(doc["_id"])
        (ids if doc["title"].strip() or doc["text"].strip() else empty).append(doc["_id"])
    total = len(ids) + len(empty)
    if empty and not skip_empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DataFormatError(f"{corpus.path}:{_line_of(corpus.path, empty[0])}: document {empty[0]!r}{more} has no "
                              "text (title and text are empty); no query can be made from it; leave such documents "
                              "out with --skip-empty (skip_empty=True)")
    if not ids:
        raise DataFormatError(f"{corpus.path}: none of its {total} documents has text; no query can be made")
    if empty:
        logger.warning("%s: left out %d documents without text (e.g. %r)", corpus.path, len(empty), empty[0])
    excluded = []
    if exclude:
        leave_out = set(exclude)
        excluded = [d for d in ids if d in leave_out]
        ids = [d for d in ids if d not in leave_out]
        if not ids:
            origin = (f" (the sources of {', '.join(sorted(set(map(str, exclude.values()))))})"
                      if isinstance(exclude, Mapping) else "")
            raise ConfigError(f"{corpus.path}: all {len(excluded)} documents with text are excluded{origin}; no "
                              "document is left to make queries from")
    if max_documents is not None and max_documents < len(ids):
        rows = np.sort(np.random.default_rng(seed).choice(len(ids), size=max_documents, replace=False))
        ids = [ids[int(i)] for i in rows]
    return DocumentSelection(ids, total, {"no_text": empty, "excluded": excluded})
