"""Filters of made-up queries: length limits, duplicates, and round-trip consistency with a retriever.

Applied in that order (the cheap ones first, the retrieval last), each drops queries and counts them under its
reason in :attr:`QuerySet.counts` (``too_short``, ``too_long``, ``duplicate``, ``round_trip``) and appends a step
to :attr:`QuerySet.filters`.

Round-trip consistency (Alberti et al. 2019; Promptagator, Dai et al. 2022) keeps a query only when a retriever
given the query ranks its source document in the top ``k``: queries the document does not answer, or that fit
many documents as well, are dropped. The retriever is BM25 (:func:`retrieval_kd.search.bm25_index_for`) or a
SentenceTransformer (:func:`retrieval_kd.search.dense.dense_search`); Promptagator used a retriever trained on the
unfiltered queries, which is a student of this project trained once without the filter.

References:
    Alberti, C., et al. (2019). Synthetic QA Corpora Generation with Roundtrip Consistency. ACL.
    Dai, Z., et al. (2022). Promptagator: Few-shot Dense Retrieval From 8 Examples. ICLR 2023.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import asdict, dataclass

from retrieval_kd.errors import ConfigError
from retrieval_kd.queries.query_set import QuerySet

logger = logging.getLogger(__name__)

__all__ = ["QueryFilters", "apply_filters", "normalise_query", "round_trip_hits", "sample_queries"]

_PUNCT = re.compile(r"[^\w\s]")


def normalise_query(text: str) -> str:
    """What two queries must share to count as duplicates: NFKC, case-folded, no punctuation, single spaces."""
    return " ".join(_PUNCT.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


@dataclass
class QueryFilters:
    """Which filters to apply.

    Attributes:
        min_words: drop queries of fewer words (whitespace-separated).
        max_words: drop queries of more words (None: no limit).
        dedup: keep the first of queries that are equal once normalised (:func:`normalise_query`), whichever
            documents they come from.
        round_trip: None (off), ``bm25``, or a SentenceTransformer (hub id or folder) that retrieves for each query.
        round_trip_k: keep a query when its source is in the retriever's top ``k`` (1: the top hit only).
    """

    min_words: int = 1
    max_words: int | None = None
    dedup: bool = True
    round_trip: str | None = None
    round_trip_k: int = 1

    def __post_init__(self) -> None:
        if self.min_words < 0 or (self.max_words is not None and self.max_words < max(1, self.min_words)):
            raise ConfigError(f"query length limits min_words={self.min_words}, max_words={self.max_words}: need "
                              "0 <= min_words <= max_words")
        if self.round_trip_k < 1:
            raise ConfigError(f"round_trip_k={self.round_trip_k}: the source must be within the top k >= 1")

    def settings(self) -> dict:
        return asdict(self)


def round_trip_hits(query_set: QuerySet, collection, retriever: str = "bm25", k: int = 1) -> set[str]:
    """Ids of the queries whose source document ``retriever`` ranks in its top ``k`` for them."""
    if retriever == "bm25":
        from retrieval_kd.search import bm25_index_for

        run = bm25_index_for(collection).search(query_set.queries, top_k=k)
    else:
        from retrieval_kd.search.dense import dense_search

        run = dense_search(retriever, collection, query_set.queries, top_k=k)
    return {q for q, docs in run.items() if query_set.sources[q] in docs}


def _step(query_set: QuerySet, keep: list[str], reason: str, settings: dict) -> QuerySet:
    dropped = len(query_set) - len(keep)
    out = query_set.subset(keep)
    counts = dict(out.counts.get("dropped") or {})
    counts[reason] = counts.get(reason, 0) + dropped
    out.counts["dropped"] = counts
    out.filters.append({"filter": reason, **settings, "dropped": dropped, "kept": len(keep)})
    if dropped:
        logger.info("queries: %s dropped %d of %d", reason, dropped, len(query_set))
    return out


def apply_filters(query_set: QuerySet, filters: QueryFilters | None, collection=None) -> QuerySet:
    """``query_set`` without the queries ``filters`` drop (a new set; counts and filter steps added).

    ``collection`` is needed for the round trip (its corpus is searched).
    """
    if filters is None:
        return query_set
    words = {q: len(t.split()) for q, t in query_set.queries.items()}
    out = query_set
    if filters.min_words > 0:
        out = _step(out, [q for q in out.queries if words[q] >= filters.min_words], "too_short",
                    {"min_words": filters.min_words})
    if filters.max_words is not None:
        out = _step(out, [q for q in out.queries if words[q] <= filters.max_words], "too_long",
                    {"max_words": filters.max_words})
    if filters.dedup:
        seen, keep = set(), []
        for qid, text in out.queries.items():
            key = normalise_query(text)
            if key not in seen:
                seen.add(key)
                keep.append(qid)
        out = _step(out, keep, "duplicate", {"normalised": "nfkc-casefold-nopunct"})
    if filters.round_trip:
        if collection is None:
            raise ValueError("the round-trip filter searches the corpus: pass the collection")
        hits = round_trip_hits(out, collection, filters.round_trip, filters.round_trip_k) if len(out) else set()
        out = _step(out, [q for q in out.queries if q in hits], "round_trip",
                    {"retriever": filters.round_trip, "k": filters.round_trip_k})
    return out


def sample_queries(query_set: QuerySet, max_queries: int | None, seed: int = 0) -> QuerySet:
    """At most ``max_queries`` of ``query_set``: a seeded uniform sample, kept in the set's order (a training
    budget). Recorded as a ``max_queries`` step (its drop count, 0 when the set is smaller); None: no cap."""
    if max_queries is None:
        return query_set
    if max_queries < 1:
        raise ConfigError(f"max_queries={max_queries}: keep at least one query (or no cap: None)")
    ids = list(query_set.queries)
    keep = ids
    if len(ids) > max_queries:
        import numpy as np

        rows = np.sort(np.random.default_rng(seed).choice(len(ids), size=max_queries, replace=False))
        keep = [ids[int(i)] for i in rows]
    return _step(query_set, keep, "max_queries", {"max_queries": max_queries, "seed": seed})
