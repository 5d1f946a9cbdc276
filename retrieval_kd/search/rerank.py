"""Rerank a run with any teacher (or ensemble): its top-``depth`` documents per query, rescored.

The teacher scores through the score store (:func:`retrieval_kd.teachers.score_candidates`), so a rerank is
resumable and reuses scores already stored for the same teacher, queries and candidates; without a ``store`` a
temporary one is used and removed.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping

from retrieval_kd.search.base import check_k

logger = logging.getLogger(__name__)

__all__ = ["rerank", "top_of_run"]

Run = Mapping[str, Mapping[str, float]]


def top_of_run(run: Run, depth: int) -> dict[str, dict[str, float]]:
    """Each query's ``depth`` best documents (ties by doc id, as run files are written)."""
    depth = check_k(depth, "depth")
    return {q: dict(sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))[:depth]) for q, docs in run.items()}


def rerank(run: Run, teacher, collection, depth: int = 100, queries: Mapping[str, str] | None = None,
           store: str | os.PathLike | None = None, batch_queries: int = 8,
           show_progress: bool = False) -> dict[str, dict[str, float]]:
    """The run's top-``depth`` documents of each query, scored by ``teacher``; returns the reranked run.

    Args:
        run: ``{qid: {doc_id: score}}`` (a first stage's run file, :func:`retrieval_kd.data.read_run`).
        teacher: a :class:`~retrieval_kd.teachers.Teacher` (``parse_teacher(spec)``) or an ``EnsembleTeacher``.
        collection: the collection whose corpus holds the run's documents.
        depth: documents per query that are reranked (the rest are dropped).
        queries: ``{qid: text}`` (default: all of the collection's); the run's queries not among them are left out
            with a warning, none at all is an error.
        store: a score-store folder to keep the scores in (default: a temporary one).
    """
    from retrieval_kd.errors import ConfigError
    from retrieval_kd.teachers import ScoreStore, score_candidates

    queries = dict(queries) if queries is not None else collection.all_queries
    top = top_of_run(run, depth)
    missing = [q for q in top if q not in queries]
    if missing and len(missing) == len(top):
        raise ConfigError(f"none of the run's {len(top)} queries (e.g. {missing[0]!r}) is among the queries given; "
                          "rerank a run of these queries")
    if missing:
        logger.warning("%d of the run's %d queries are not among the queries given (e.g. %r); left out",
                       len(missing), len(top), missing[0])
        top = {q: docs for q, docs in top.items() if q in queries}
    with tempfile.TemporaryDirectory(prefix="rkd-rerank-") as tmp:
        folder = store if store is not None else tmp
        score_candidates(teacher, collection, top, folder, queries=queries, batch_queries=batch_queries,
                         show_progress=show_progress)
        with ScoreStore(folder) as scores:
            scored = scores.get(teacher.fingerprint, qids=list(top))
    return {q: dict(sorted(scored.get(q, {}).items(), key=lambda kv: (-kv[1], kv[0]))) for q in top}
