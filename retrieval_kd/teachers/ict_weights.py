"""Ensemble weights fitted without labels, on the inverse cloze task with the sentence removed from its source.

A sentence cut from a document is a query whose one relevant document is known: its source. Fitting an ensemble's
weights on the *whole* source rewards word overlap (the sentence is a substring of it, so BM25 finds it almost
always and takes nearly all the weight; docs/label-free.md, "Ensemble weights without labels"). Here the sentence
is cut out of its source first (Lee et al. 2019's ICT, with removal always), so a member ranks the rest of the
document high only if it matches what the sentence is *about*: a pseudo-label that needs more than shared words.

For ``queries`` sentences of distinct documents (4-64 words, seeded), the pool of each is BM25's top-``top_k``
over the corpus with every sampled source masked, all-MiniLM-L6-v2's top-``top_k`` (its cached corpus
embeddings) and the masked source. Every member scores the pool (BM25 members on an index of the masked corpus,
the others on the pool's texts, the masked source under an id of its own so no cache mixes it with the
document), and :func:`~retrieval_kd.teachers.ensemble.fit_weights` searches the weight simplex for the masked
source's nDCG@10. The pool and the filters follow the pipeline's label-free queries; no query or judgement of the
collection is read.

Known limits: BM25 members score every pool on the corpus with *all* sampled sources masked, the other members see
the sampled sources of other queries unmasked (a small inconsistency, about 1 in 5 pool documents on a corpus of
1,400 with 300 queries); and the whole corpus is sentence-split and indexed by BM25 in memory for the fit, which
suits collections of up to some hundred thousand documents, not MS MARCO's 8.8M (use labels or fixed weights there).

Measured (docs/label-free.md, "Ensemble weights from the inverse cloze task"): on Cranfield, TREC DL 2019, CISI and
SciFact the weights it fits beat equal weights as rerankers of BM25's top-100 on every one.

References:
    Lee, K., Chang, M.-W., Toutanova, K. (2019). Latent Retrieval for Weakly Supervised Open Domain Question
    Answering. ACL.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from retrieval_kd.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["IctFit", "fit_weights_ict", "masked_id"]

#: the id a masked source is scored under: its document's, a NUL (which no document id holds) and a hash of the
#: masked text, so a member's passage cache never mixes it with the document or with another cut of it
MASKED = "{doc}\x00ict-{digest}"


def masked_id(doc_id: str, text: str) -> str:
    return MASKED.format(doc=doc_id, digest=hashlib.sha1(text.encode("utf-8")).hexdigest()[:16])


@dataclass
class IctFit:
    """The fitted weights (one per member), the masked sources' nDCG@10 they reach, and how many queries;
    ``per_query``: each query's nDCG@10 for the fitted ensemble (``"ensemble"``) and for each member (its index),
    in one query order."""

    weights: list[float]
    ndcg: float
    queries: int
    members_ndcg: list[float] = field(default_factory=list)
    per_query: dict[str | int, list[float]] = field(default_factory=dict)

    def gain_over(self, member: int) -> tuple[float, float]:
        """How much the fitted ensemble beats member ``member`` on these ICT queries: the mean nDCG@10 difference
        and a paired t-test's two-sided p (where the difference is the same on every query: 1.0 if it is 0, else 0.0).

        The pipeline asks this of the member that is also the dense student's starting model: distilling from a
        teacher that is no better than the start on the collection moved the student *down* (TREC DL 2019, README).
        """
        from scipy.stats import ttest_rel

        ours, theirs = np.asarray(self.per_query["ensemble"]), np.asarray(self.per_query[member])
        diff = ours - theirs
        gain = float(np.mean(diff))
        if np.ptp(diff) < 1e-9:  # no spread: the t statistic is undefined (0 / 0) or infinite
            return gain, 1.0 if abs(gain) < 1e-9 else 0.0
        return gain, float(ttest_rel(ours, theirs).pvalue)


def _masked_sources(collection, queries: int, seed: int) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """``(query texts, query -> source id, source id -> its text without the query)`` of a seeded sample of sentence
    crops (the masked text as :meth:`QuerySet.positive_texts` gives ICT's positives: title kept)."""
    from retrieval_kd.queries.crop import crop_queries
    from retrieval_kd.queries.filters import QueryFilters

    made = crop_queries(collection, "sentence", 1, seed=seed, remove_sentence=1.0, skip_empty=True,
                        filters=QueryFilters(min_words=4, max_words=64))
    eligible = [q for q in made.queries if q in made.removed]  # a one-sentence document leaves nothing to find
    if len(eligible) < 2:
        raise ConfigError(f"{collection.name}: {len(eligible)} documents of more than one sentence give a query of "
                          "4-64 words; fitting weights on the inverse cloze task needs at least 2")
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(eligible, size=min(queries, len(eligible)), replace=False).tolist())
    rest = made.subset(picked).positive_texts(collection.corpus)
    return ({q: made.queries[q] for q in picked}, {q: made.sources[q] for q in picked},
            {made.sources[q]: rest[q] for q in picked})


def fit_weights_ict(collection, members: Sequence, queries: int = 300, seed: int = 0, top_k: int = 30,
                    sources: Sequence[str] = ("bm25", "dense"), normalization: str = "minmax", step: float = 0.1,
                    encoding: str = "torch", dense_model: str = "sentence-transformers/all-MiniLM-L6-v2") -> IctFit:
    """Fit the weights of an ensemble of ``members`` (teachers) on ``collection``'s corpus alone (module docstring).

    ``sources``: what fills each pool besides the masked source (``bm25``: over the masked corpus; ``dense``:
    ``dense_model`` over the cached corpus embeddings), ``top_k`` of each; ``encoding``: the dense search's backend
    (the pipeline's). Returns an :class:`IctFit`.
    """
    from retrieval_kd.eval import evaluate
    from retrieval_kd.search.bm25 import BM25Index, BM25Params
    from retrieval_kd.teachers.candidates import mine_dense
    from retrieval_kd.teachers.ensemble import combine_runs, fit_weights

    if len(members) < 2:
        raise ConfigError(f"fitting ensemble weights needs at least 2 members, got {len(members)}")
    texts, source_of, masked = _masked_sources(collection, queries, seed)
    corpus = [{"_id": d["_id"], "title": "", "text": masked[d["_id"]]} if d["_id"] in masked else d
              for d in collection.corpus]
    indexes: dict[tuple[float, float], BM25Index] = {}

    def bm25(k1: float = 0.9, b: float = 0.4) -> BM25Index:  # the masked corpus, once per (k1, b)
        if (k1, b) not in indexes:
            indexes[k1, b] = BM25Index.build(corpus, BM25Params(k1=k1, b=b))
        return indexes[k1, b]

    unknown = set(sources) - {"bm25", "dense"}
    if unknown:
        raise ConfigError(f"unknown candidate source {sorted(unknown)[0]!r}; use bm25 or dense")
    found = [bm25().search(texts, top_k=top_k)] if "bm25" in sources else []
    if "dense" in sources:  # one more: the source (unmasked here) may be among them
        found.append(mine_dense(collection, texts, dense_model, top_k + 1, encoding=encoding))
    pools = {}
    for qid, src in source_of.items():
        others = [d for run in found for d in run.get(qid, {}) if d != src]
        pools[qid] = [src, *dict.fromkeys(others)]
    alone = sum(len(pool) < 2 for pool in pools.values())
    if alone == len(pools):
        raise ConfigError(f"{collection.name}: no ICT query's pool holds a document besides its source (candidate "
                          f"sources {list(sources)}, top {top_k}); every member would rank it first, so there is "
                          "nothing to fit the weights on")
    if alone > len(pools) // 2:
        logger.warning("ICT weight fit: %d of %d queries have no document besides their source in their pool; they "
                       "tell the members apart not at all", alone, len(pools))
    qrels = {qid: {src: 1} for qid, src in source_of.items()}
    runs = []
    for member in members:
        if member.kind == "bm25":
            index = bm25(member.k1, member.b)
            runs.append({q: dict(zip(pool, map(float, index.score(texts[q], pool)))) for q, pool in pools.items()})
            continue
        member.prepare(collection)
        items = []
        for qid, pool in pools.items():
            text = masked[source_of[qid]]
            ids = [masked_id(source_of[qid], text), *pool[1:]]
            docs = [text, *collection.corpus.texts(pool[1:])]
            items.append((texts[qid], ids, docs))
        scores = [s for i in range(0, len(items), 16) for s in member.score_batch(items[i:i + 16])]
        runs.append({q: dict(zip(pool, map(float, s))) for (q, pool), s in zip(pools.items(), scores)})
    weights, value = fit_weights(runs, qrels, normalization, step=step)
    order = sorted(qrels)
    per_query = {}
    for key, run in [*enumerate(runs), ("ensemble", combine_runs(runs, weights, normalization))]:
        values = evaluate(qrels, run, ["ndcg@10"]).per_query["ndcg@10"]
        per_query[key] = [values.get(q, 0.0) for q in order]
    members_ndcg = [float(np.mean(per_query[i])) for i in range(len(runs))]
    logger.info("ensemble weights fitted on %d ICT queries (sentence removed from its source): %s (nDCG@10 %.4f; "
                "members %s)", len(qrels), weights, value, [round(v, 4) for v in members_ndcg])
    return IctFit([float(w) for w in weights], float(value), len(qrels), members_ndcg, per_query)
