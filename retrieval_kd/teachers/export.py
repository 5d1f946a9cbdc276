"""Exports of stored teacher scores in the formats distillation code reads.

* TSV as in Hofstaetter et al.'s Margin-MSE release: ``score_pos<TAB>score_neg<TAB>qid<TAB>pid_pos<TAB>pid_neg``,
  one line per (positive, negative) pair;
* n-tuple JSON lines for listwise losses: ``{"qid", "doc_ids": [pos, neg1, ...], "scores": [...]}``, negatives
  hardest first;
* a Hugging Face ``datasets.Dataset`` with texts, ready for sentence-transformers' trainer and its
  ``MarginMSELoss`` (columns ``query``, ``positive``, ``negative``, ``label`` = teacher margin).

Positives are the judged documents (grade >= the dataset's relevance level) that the teacher scored; negatives
are the other scored candidates, judged-relevant ones excluded.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping

from retrieval_kd.data.formats import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["iter_pairs", "export_tsv", "export_jsonl", "to_hf_dataset"]


def _split_candidates(scores: Mapping[str, float], judged: Mapping[str, int], level: int):
    positives = sorted((d for d in scores if judged.get(d, 0) >= level), key=lambda d: (-scores[d], d))
    negatives = sorted((d for d in scores if judged.get(d, 0) < level), key=lambda d: (-scores[d], d))
    return positives, negatives


def iter_pairs(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]], level: int = 1,
               max_negatives: int | None = None) -> Iterator[tuple[str, str, str, float, float]]:
    """``(qid, pos, neg, score_pos, score_neg)`` for every positive and its (hardest-first) negatives."""
    skipped = 0
    for qid in sorted(run):
        positives, negatives = _split_candidates(run[qid], qrels.get(qid, {}), level)
        if not positives or not negatives:
            skipped += 1
            continue
        for pos in positives:
            for neg in negatives[:max_negatives]:
                yield qid, pos, neg, run[qid][pos], run[qid][neg]
    if skipped:
        logger.info("%d queries had no scored positive or no negative and give no pairs", skipped)


def export_tsv(run, qrels, path: str | os.PathLike, level: int = 1, max_negatives: int | None = None) -> int:
    n = 0
    with atomic_write(path) as fh:
        for qid, pos, neg, sp, sn in iter_pairs(run, qrels, level, max_negatives):
            fh.write(f"{sp:.6f}\t{sn:.6f}\t{qid}\t{pos}\t{neg}\n")
            n += 1
    return n


def export_jsonl(run, qrels, path: str | os.PathLike, level: int = 1, n_negatives: int | None = None) -> int:
    n = 0
    with atomic_write(path) as fh:
        for qid in sorted(run):
            positives, negatives = _split_candidates(run[qid], qrels.get(qid, {}), level)
            for pos in positives:
                docs = [pos, *negatives[:n_negatives]]
                if len(docs) < 2:
                    continue
                fh.write(json.dumps({"qid": qid, "doc_ids": docs, "scores": [run[qid][d] for d in docs]}) + "\n")
                n += 1
    return n


def to_hf_dataset(run, qrels, collection, queries: Mapping[str, str] | None = None, level: int = 1,
                  max_negatives: int | None = None, path: str | os.PathLike | None = None, overwrite: bool = False):
    """A ``datasets.Dataset`` of (query, positive, negative, label=margin) rows with texts; saved if ``path``
    (atomically; an existing folder only replaced when retrieval-kd wrote it as such a dataset, or ``overwrite``)."""
    import datasets

    queries = queries or collection.all_queries
    rows = list(iter_pairs(run, qrels, level, max_negatives))
    doc_ids = sorted({d for _, p, n, _, _ in rows for d in (p, n)})
    texts = dict(zip(doc_ids, collection.corpus.texts(doc_ids))) if doc_ids else {}
    ds = datasets.Dataset.from_dict({
        "query_id": [r[0] for r in rows],
        "query": [queries[r[0]] for r in rows],
        "positive_id": [r[1] for r in rows],
        "positive": [texts[r[1]] for r in rows],
        "negative_id": [r[2] for r in rows],
        "negative": [texts[r[2]] for r in rows],
        "score_positive": [r[3] for r in rows],
        "score_negative": [r[4] for r in rows],
        "label": [r[3] - r[4] for r in rows],
    })
    if path is not None:
        from retrieval_kd.utils.fs import atomic_folder

        with atomic_folder(path, "teacher-dataset", overwrite=overwrite) as tmp:
            ds.save_to_disk(str(tmp))
    return ds
