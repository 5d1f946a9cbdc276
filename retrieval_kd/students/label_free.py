"""What a distillation run trains on when it has no human labels: made-up queries and pseudo-positives.

``data.queries`` names a query set made by ``rkd queries`` (its sidecar gives each query's source document) and
``data.positives`` what the positives are (:func:`retrieval_kd.queries.pseudo_qrels`): the source (GPL), the
teacher's top-scored candidate(s), or both; ``data.exclude_source`` drops the source from the candidates (the
teacher's ranking of the other documents is learnt). Negatives stay the other scored candidates and the label the
teacher's margin, so pair building (:func:`retrieval_kd.students.data.pair_dataset`) is the labelled path's. With
``data.mix_labeled`` the split's judged queries join with their qrels (labelled + generated). Queries the teacher
has not scored are left out with a warning naming how many (score them with ``rkd teach`` on the query set).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from retrieval_kd.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["LabelFreeInputs", "label_free_inputs"]


@dataclass
class LabelFreeInputs:
    """Attributes:
    queries: query id -> text of every training query (made-up ones, plus the split's with ``mix_labeled``).
    qrels: pseudo-qrels of the made-up queries (and the real ones of the split's).
    level: the grade a positive has.
    fingerprint, run: the teacher's fingerprint and scores ``{qid: {doc: score}}`` of the scored queries.
    query_set: the :class:`~retrieval_kd.queries.QuerySet` (None: the split's queries, teacher positives).
    excluded: ``{qid: source}`` dropped from the candidates (``data.exclude_source``; None: none), which the
        in-batch teacher leaves out too.
    """

    queries: dict
    qrels: dict
    level: int
    fingerprint: str
    run: dict
    query_set: object | None
    excluded: dict | None = None

    def with_removed_spans(self, dataset, corpus):
        """Rows whose positive (or negative, with teacher positives) is a query's source get the source without
        the query's sentence, where it was removed (inverse cloze task)."""
        texts = self.query_set.positive_texts(corpus) if self.query_set is not None else {}
        if not texts:
            return dataset
        sources = self.query_set.sources

        def without_query(row):
            q = row["query_id"]
            return {c: texts[q] if q in texts and row[f"{c}_id"] == sources[q] else row[c]
                    for c in ("positive", "negative")}

        return dataset.map(without_query)


def label_free_inputs(data, collection) -> LabelFreeInputs:
    """Queries, pseudo-qrels and teacher scores of a run on ``data`` (a :class:`DataConfig`, positives not qrels)."""
    from retrieval_kd.queries import pseudo_qrels, read_query_set
    from retrieval_kd.teachers.store import resolve_teacher_scores

    level = max(1, collection.conventions.relevance_level)
    query_set = None
    if data.queries:
        query_set = read_query_set(data.queries, collection)
        queries = dict(query_set.queries)
    else:
        queries = collection.queries(data.split)
    labeled = collection.qrels(data.split) if data.mix_labeled else {}
    if labeled:
        texts = collection.all_queries
        clash = sorted(set(labeled) & set(queries))
        if clash:
            raise ConfigError(f"{data.queries}: query id {clash[0]!r} is also a query of split {data.split!r}; "
                              "give the made-up queries another id prefix (rkd queries --id-prefix)")
        queries.update({q: texts[q] for q in labeled if q in texts})
    fingerprint, run = resolve_teacher_scores(data.store, data.teacher, queries)
    unscored = len(queries) - len(run)
    if unscored:
        logger.warning("%s: %d of %d training queries have no %s scores and are left out; score their candidates "
                       "with rkd teach", data.store, unscored, len(queries), data.teacher)
    made = {q: s for q, s in run.items() if q not in labeled}
    excluded = None
    if data.exclude_source and query_set is not None:
        sources = query_set.sources
        excluded = {q: sources[q] for q in made if q in sources}
        made = {q: {d: v for d, v in s.items() if d != excluded.get(q)} for q, s in made.items()}
        run = {**run, **made}
    qrels = pseudo_qrels(made, query_set.sources if query_set is not None else None, data.positives, level)
    qrels.update({q: labeled[q] for q in run if q in labeled})
    logger.info("label-free data: %d made-up queries with %s positives, %d labelled", len(made), data.positives,
                len(run) - len(made))
    return LabelFreeInputs(queries, qrels, level, fingerprint, run, query_set, excluded)
