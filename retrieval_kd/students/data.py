"""Training data for students: teacher-scored pairs as a Hugging Face dataset, a dev split, the collator.

* :func:`pair_dataset` turns stored teacher scores into (query, positive, negative) rows that keep their ids and
  teacher scores, so samplers can group by query and margin and the collator can look up in-batch teacher scores.
* :func:`split_dev` holds out part of the *training* queries for evaluation during training (never the test split).
* :class:`DistillationCollator` wraps sentence-transformers' collator: it drops the id and score columns before
  tokenisation and puts in ``label`` what the loss reads (teacher scores, plus in-batch teacher scores for TAS-B's
  dual teacher).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["DistillationCollator", "InBatchTeacher", "StoredInBatchTeacher", "dev_evaluator", "pair_dataset",
           "split_dev"]

TEXT_COLUMNS = ("query", "positive", "negative")
META_COLUMNS = ("query_id", "positive_id", "negative_id", "score_positive", "score_negative")


def split_dev(query_ids: Sequence[str], fraction: float, seed: int = 0, max_queries: int | None = None):
    """Split training query ids into (train, dev) with a seeded shuffle; ``fraction`` 0 gives no dev queries."""
    ids = sorted(query_ids)
    n_dev = int(round(len(ids) * fraction))
    if max_queries is not None:
        n_dev = min(n_dev, max_queries)
    order = np.random.default_rng(seed).permutation(len(ids))
    dev = sorted(ids[i] for i in order[:n_dev])
    dev_set = set(dev)
    return [q for q in ids if q not in dev_set], dev


def pair_dataset(run: Mapping[str, Mapping[str, float]], qrels, collection, level: int = 1,
                 max_negatives: int | None = 30, scale: float = 1.0, query_ids: Sequence[str] | None = None,
                 queries: Mapping[str, str] | None = None):
    """Teacher-scored (query, positive, negative) rows as a ``datasets.Dataset``.

    Positives are the judged documents (grade >= ``level``) that the teacher scored; negatives the other scored
    candidates, hardest (highest teacher score) first, at most ``max_negatives`` per query. ``qrels`` may be
    pseudo-qrels (:func:`retrieval_kd.queries.pseudo_qrels`) and ``queries`` the texts of generated queries
    (default: the collection's). Columns: ``query``,
    ``positive``, ``negative`` (texts, in the order the losses read them), then ``query_id``, ``positive_id``,
    ``negative_id``, ``score_positive``, ``score_negative`` (teacher scores times ``scale``).
    """
    from retrieval_kd.teachers.export import to_hf_dataset

    if query_ids is not None:
        keep = set(query_ids)
        run = {q: s for q, s in run.items() if q in keep}
    if not run:
        raise ValueError("no teacher scores for the training queries; score their candidates with `rkd teach` first")
    ds = to_hf_dataset(run, qrels, collection, queries=queries, level=level, max_negatives=max_negatives)
    if ds.num_rows == 0:
        raise ValueError(f"{collection.name}: no (positive, negative) pair among the scored candidates; are the "
                         "judged positives among the candidates (rkd teach mine adds them)?")
    if scale != 1.0:
        ds = ds.map(lambda r: {"score_positive": r["score_positive"] * scale,
                               "score_negative": r["score_negative"] * scale})
    ds = ds.select_columns([*TEXT_COLUMNS, *META_COLUMNS])
    logger.info("pair dataset: %d rows from %d queries", ds.num_rows, len(set(ds["query_id"])))
    return ds


class InBatchTeacher:
    """Teacher scores for arbitrary (query, passage) pairs of a batch, from cached bi-encoder embeddings.

    TAS-B scores in-batch negatives with a second, cheaper teacher (ColBERT in the paper). Here it is any
    SentenceTransformer whose query and corpus embeddings are cached on disk (:mod:`retrieval_kd.encoders`), so
    scoring a batch is one small matrix product.

    Args:
        query_embeddings: query id -> row of ``queries``.
        queries: ``(n_queries, dim)``.
        doc_rows: doc id -> row of ``docs``.
        docs: ``(n_docs, dim)`` (may be memory-mapped).
    """

    def __init__(self, query_rows: Mapping[str, int], queries: np.ndarray, doc_rows: Callable[[Sequence[str]], np.ndarray],
                 docs: np.ndarray):
        self.query_rows, self.queries, self.doc_rows, self.docs = dict(query_rows), queries, doc_rows, docs

    @classmethod
    def from_model(cls, model: str, collection, queries: Mapping[str, str], max_seq_length: int = 256):
        from retrieval_kd.encoders import corpus_embeddings, query_embeddings

        docs = corpus_embeddings(model, collection.corpus, max_seq_length)
        q = query_embeddings(model, dict(queries), max_seq_length)
        return cls({qid: i for i, qid in enumerate(queries)}, q, collection.corpus.rows, docs)

    def scores(self, query_ids: Sequence[str], doc_ids: Sequence[str]) -> np.ndarray:
        """``(len(query_ids), len(doc_ids))`` teacher scores."""
        try:
            q = self.queries[[self.query_rows[qid] for qid in query_ids]]
        except KeyError as exc:
            raise KeyError(f"in-batch teacher has no embedding for query {exc.args[0]!r}") from None
        d = np.asarray(self.docs[np.asarray(self.doc_rows(list(doc_ids)))])
        return q @ d.T


class StoredInBatchTeacher:
    """In-batch teacher scores taken from the pairwise teacher's own stored scores.

    The pairwise teacher (e.g. the BM25 + MiniLM ensemble) scored each query's candidates only. A passage of the
    batch that is not among a query's candidates (another query's positive or negative) was not retrieved for it
    by first-stage search, so it gets the query's lowest stored score: the teacher ranks it below everything it
    scored. This keeps one teacher for both terms without scoring new pairs.

    Args:
        run: ``{qid: {did: score}}`` of the teacher (already scaled like the pair labels).
        exclude: ``{qid: did}`` pairs scored ``-inf``, which the in-batch loss leaves out: a made-up query's own
            source under ``data.exclude_source`` (were it "unscored", it would be taught as the query's worst
            passage whenever it is another query's positive or negative in the batch).
    """

    def __init__(self, run: Mapping[str, Mapping[str, float]], exclude: Mapping[str, str] | None = None):
        self.run = run
        self.floor = {q: min(s.values()) for q, s in run.items() if s}
        self.exclude = dict(exclude or {})

    def scores(self, query_ids: Sequence[str], doc_ids: Sequence[str]) -> np.ndarray:
        out = np.empty((len(query_ids), len(doc_ids)), dtype=np.float32)
        for i, q in enumerate(query_ids):
            if q not in self.run:
                raise KeyError(f"the stored teacher has no scores for query {q!r}")
            scores, floor, left_out = self.run[q], self.floor[q], self.exclude.get(q)
            out[i] = [-np.inf if d == left_out else scores.get(d, floor) for d in doc_ids]
        return out


class DistillationCollator:
    """Wraps a sentence-transformers data collator for distillation rows.

    Args:
        inner: the trainer's collator (``SentenceTransformerDataCollator``).
        label_mode: ``"scores"`` (label = ``[score_positive, score_negative]``, read by MarginMSELoss and
            DistillKLDivLoss), ``"dual"`` (those two, then the in-batch teacher's scores of each query against
            ``[pos_1..pos_B, neg_1..neg_B]``) or None (no label: MultipleNegativesRankingLoss).
        inbatch_teacher: needed for ``"dual"``.
    """

    def __init__(self, inner: Callable, label_mode: str | None = "scores", inbatch_teacher: InBatchTeacher | None = None):
        if label_mode not in ("scores", "dual", None):
            raise ValueError(f"label_mode must be 'scores', 'dual' or None, not {label_mode!r}")
        if label_mode == "dual" and inbatch_teacher is None:
            raise ValueError("label_mode 'dual' needs an inbatch_teacher")
        self.inner, self.label_mode, self.inbatch_teacher = inner, label_mode, inbatch_teacher

    def __getattr__(self, name: str):
        # the trainer reads attributes of its collator (valid_label_columns, ...): those of the wrapped one
        if name in ("inner", "label_mode", "inbatch_teacher"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        missing = [c for c in TEXT_COLUMNS if c not in features[0]]
        if missing:
            raise ValueError(f"distillation rows need the columns {list(TEXT_COLUMNS)}; missing {missing}")
        rows = [{c: f[c] for c in TEXT_COLUMNS} for f in features]
        batch = self.inner(rows)
        if self.label_mode is None:
            return batch
        labels = torch.tensor([[f["score_positive"], f["score_negative"]] for f in features], dtype=torch.float32)
        if self.label_mode == "dual":
            docs = [f["positive_id"] for f in features] + [f["negative_id"] for f in features]
            inbatch = self.inbatch_teacher.scores([f["query_id"] for f in features], docs)
            labels = torch.cat([labels, torch.as_tensor(inbatch, dtype=torch.float32)], dim=1)
        batch["label"] = labels
        return batch


def dev_evaluator(collection, dev_query_ids: Sequence[str], candidates: Mapping[str, Mapping[str, float]], qrels,
                  level: int = 1, name: str = "dev", batch_size: int = 32, queries: Mapping[str, str] | None = None):
    """An IR evaluator over held-out training queries and their candidate passages (not the whole corpus).

    Encoding the whole corpus at each evaluation would cost minutes on a CPU; the dev corpus is the union of the
    dev queries' teacher candidates (which include their judged positives), so the evaluator measures how well
    the student ranks the candidates, as the teacher does. ``queries``: the query texts (default: the collection's).
    """
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    queries = collection.all_queries if queries is None else queries
    dev = [q for q in dev_query_ids if q in candidates]
    doc_ids = sorted({d for q in dev for d in candidates[q]})
    corpus = dict(zip(doc_ids, collection.corpus.texts(doc_ids)))
    relevant = {q: {d for d, g in qrels.get(q, {}).items() if g >= level and d in corpus} for q in dev}
    relevant = {q: docs for q, docs in relevant.items() if docs}
    if not relevant:
        raise ValueError("no dev query has a judged positive among its candidates")
    return InformationRetrievalEvaluator(
        queries={q: queries[q] for q in relevant}, corpus=corpus, relevant_docs=relevant, name=name,
        ndcg_at_k=[10], mrr_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[10, 100], map_at_k=[100],
        batch_size=batch_size, show_progress_bar=False,
    )
