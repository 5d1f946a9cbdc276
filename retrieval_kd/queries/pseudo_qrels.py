"""Positives without human labels: qrels-shaped judgements from the queries' sources or the teacher's ranking.

A label-free distillation run has no qrels. GPL (Wang et al. 2022) takes the document a query was generated from
as its positive and mined candidates as negatives, with the cross-encoder's margin as the label; a teacher's own
top-ranked candidate(s) can serve as the positive(s) too, or both. :func:`pseudo_qrels` returns them in the shape
of qrels (``{qid: {doc: grade}}``), so the pair building of :mod:`retrieval_kd.students.data` is unchanged.

References:
    Wang, K., et al. (2022). GPL: Generative Pseudo Labeling for Unsupervised Domain Adaptation of Dense
    Retrieval. NAACL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from retrieval_kd.errors import ConfigError

__all__ = ["POSITIVES", "parse_positive", "pseudo_qrels"]

#: the ``positive`` values: the source document, the teacher's top 1 (``teacher-topN``: top N), or source + top 1
POSITIVES = ("source", "teacher-top1", "both")
_TOP = re.compile(r"teacher-top([1-9]\d*)")


def parse_positive(positive: str) -> tuple[bool, int]:
    """``(use the source, how many of the teacher's top documents)`` of a ``positive`` value."""
    if positive == "source":
        return True, 0
    if positive == "both":
        return True, 1
    if positive == "teacher":
        return False, 1
    match = _TOP.fullmatch(positive)
    if match:
        return False, int(match.group(1))
    raise ConfigError(f"positive {positive!r}: use source, teacher (= teacher-top1), teacher-topN or both")


def pseudo_qrels(run: Mapping[str, Mapping[str, float]], sources: Mapping[str, str] | None = None,
                 positive: str = "source", grade: int = 1) -> dict[str, dict[str, int]]:
    """Judgements ``{qid: {doc: grade}}`` for the queries of ``run`` (the teacher's scores of their candidates).

    Args:
        run: ``{qid: {doc: teacher score}}``.
        sources: ``{qid: source doc}`` (from :class:`~retrieval_kd.queries.QuerySet`); needed for ``source`` and
            ``both``.
        positive: ``source`` (the source document, GPL), ``teacher-top1`` / ``teacher-topN`` (the teacher's
            best N candidates; ties broken by doc id) or ``both`` (the source and the teacher's top 1).
        grade: the grade given to positives (the dataset's relevance level, when mixed with real qrels).

    A query of ``run`` without a source (with ``source``) is left out; a source the teacher did not score is still
    a positive here, but gives no pair (pairs are built from scored candidates).
    """
    use_source, top = parse_positive(positive)
    if use_source and sources is None:
        raise ValueError(f"positive {positive!r} needs the queries' source documents (their provenance sidecar)")
    qrels: dict[str, dict[str, int]] = {}
    for qid, scores in run.items():
        judged = {}
        if use_source and qid in sources:
            judged[sources[qid]] = grade
        for doc, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:top]:
            judged[doc] = grade
        if judged:
            qrels[qid] = judged
    return qrels
