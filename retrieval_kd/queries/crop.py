"""Pseudo-queries cut from the documents themselves, no model: the title, a sentence, or a random span.

* ``title``: the document's title is its query (documents without one are skipped and counted).
* ``sentence``: the inverse cloze task (ICT, Lee et al. 2019): a random sentence is the query and the rest of the
  document its context. ``remove_sentence`` is the probability that the sentence is left out of the positive
  (Lee et al. remove it 90% of the time, so the model also learns word overlap without relying on it); the span
  removed is recorded per query (:attr:`QuerySet.removed`) and the training pairs use the document without it.
* ``span``: random cropping (Contriever, Izacard et al. 2022): a contiguous run of words, its length a uniform
  ratio of the document's length (``span_ratio``, 10-50% as in Contriever), optionally capped.

Every choice is drawn from a generator seeded by (``seed``, document id), so a document's queries do not depend on
which other documents are chosen.

References:
    Lee, K., Chang, M.-W., Toutanova, K. (2019). Latent Retrieval for Weakly Supervised Open Domain Question
    Answering. ACL.
    Izacard, G., et al. (2022). Unsupervised Dense Information Retrieval with Contrastive Learning. TMLR.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Collection

import numpy as np

from retrieval_kd.errors import ConfigError
from retrieval_kd.queries.documents import select_documents
from retrieval_kd.queries.filters import QueryFilters, apply_filters
from retrieval_kd.queries.query_set import QuerySet, collect_queries, query_id

logger = logging.getLogger(__name__)

__all__ = ["CROP_METHODS", "crop_queries", "sentence_spans"]

CROP_METHODS = ("title", "sentence", "span")
_SENTENCE_END = re.compile(r"(\S*)[.!?][\"')\]]*\s+(?=\S)")
_ABBREVIATIONS = frozenset("al approx ca cf co dr e.g eq eqs et fig figs i.e inc jr ltd mr mrs ms no nos ref refs sr st "
                           "vol vs".split())
_WORD = re.compile(r"\S+")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``[start, end)`` character spans of the sentences of ``text``: a split after ``.``, ``!`` or ``?`` (and closing
    quotes or brackets) and white space, except after a common abbreviation (``e.g.``, ``fig.``, ``et al.``) or an
    initial (``J. Smith``). No model and no case rule (lower-cased corpora such as Cranfield split too)."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        word = match.group(1)
        initial = len(word) == 1 and word.isupper()
        if match.group(0)[len(word)] == "." and (word.lower() in _ABBREVIATIONS or initial):
            continue
        spans.append((start, match.start() + len(match.group(0).rstrip())))
        start = match.end()
    spans.append((start, len(text)))
    out = []
    for s, e in spans:  # trim the spaces around each sentence
        piece = text[s:e]
        lead = len(piece) - len(piece.lstrip())
        if piece.strip():
            out.append((s + lead, s + len(piece.rstrip())))
    return out


def _rng(seed: int, doc_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(doc_id.encode("utf-8"))])


def crop_queries(collection, method: str = "sentence", queries_per_document: int = 1, seed: int = 0,
                 remove_sentence: float = 0.0, span_ratio: tuple[float, float] = (0.1, 0.5), min_span_words: int = 1,
                 max_span_words: int | None = None, max_documents: int | None = None, skip_empty: bool = False,
                 filters: QueryFilters | None = None, id_prefix: str | None = None,
                 exclude_documents: Collection[str] | None = None) -> QuerySet:
    """Pseudo-queries of ``collection``'s documents (see the module docstring).

    Args:
        method: ``title``, ``sentence`` (ICT) or ``span`` (Contriever cropping).
        queries_per_document: queries per document (``title``: always one; ``sentence``: at most its sentences).
        seed: seeds every random choice (with the document id) and the document sample.
        remove_sentence: ``sentence``: probability that the query sentence is removed from the positive.
        span_ratio: ``span``: the span's share of the document's words, drawn uniformly in this range.
        min_span_words, max_span_words: ``span``: bounds on the span's length in words.
        max_documents, skip_empty, exclude_documents: which documents (:func:`select_documents`).
        filters: applied to the queries made (:func:`apply_filters`).
        id_prefix: query ids are ``<prefix>-<doc>-<n>`` (default: the method: ``title``, ``ict``, ``span``).
    """
    if method not in CROP_METHODS:
        raise ConfigError(f"crop method {method!r}: use one of {', '.join(CROP_METHODS)}")
    low, high = span_ratio
    if not 0 < low <= high <= 1:
        raise ConfigError(f"span_ratio {span_ratio}: need 0 < low <= high <= 1")
    if not 0 <= remove_sentence <= 1:
        raise ConfigError(f"remove_sentence={remove_sentence}: a probability in [0, 1]")
    if queries_per_document < 1 or min_span_words < 1 or (max_span_words is not None and max_span_words < min_span_words):
        raise ConfigError("queries_per_document and min_span_words must be >= 1, and max_span_words >= min_span_words")
    prefix = id_prefix or {"title": "title", "sentence": "ict", "span": "span"}[method]
    selection = select_documents(collection, max_documents, seed, skip_empty, exclude_documents)
    chosen = set(selection.ids)
    made_by_doc, spans = [], {}
    skipped = {"no_title": 0, "no_text": 0}
    dropped = {"no_context": 0}
    for doc in collection.corpus:
        doc_id = doc["_id"]
        if doc_id not in chosen:
            continue
        rng, text = _rng(seed, doc_id), doc["text"]
        made: list[str] = []
        if method == "title":
            if not doc["title"].strip():
                skipped["no_title"] += 1
                continue
            made.append(doc["title"])
        elif method == "sentence":
            sentences = sentence_spans(text)
            if not sentences:
                skipped["no_text"] += 1
                continue
            for i in rng.choice(len(sentences), size=min(queries_per_document, len(sentences)), replace=False):
                start, end = sentences[int(i)]
                if rng.random() < remove_sentence:
                    if len(sentences) == 1:
                        dropped["no_context"] += 1  # nothing would be left of the positive
                        continue
                    spans[(doc_id, len(made))] = [start, end]
                made.append(text[start:end])
        else:
            words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
            if not words:
                skipped["no_text"] += 1
                continue
            for _ in range(queries_per_document):
                n = int(round(rng.uniform(low, high) * len(words)))
                n = max(min_span_words, n if max_span_words is None else min(n, max_span_words))
                n = min(n, len(words))
                first = int(rng.integers(0, len(words) - n + 1))
                made.append(text[words[first][0]:words[first + n - 1][1]])
        made_by_doc.append((doc_id, made))
    queries, sources, empty = collect_queries(made_by_doc, prefix)
    dropped.update(empty)
    removed = {qid: span for (doc_id, n), span in spans.items() if (qid := query_id(prefix, doc_id, n)) in queries}
    counts = selection.counts()
    counts["skipped_documents"].update({k: v for k, v in skipped.items() if v})
    counts.update(candidates=len(queries) + sum(dropped.values()), dropped={k: v for k, v in dropped.items() if v})
    settings = {"method": method, "queries_per_document": queries_per_document, "seed": seed,
                "max_documents": max_documents, "skip_empty": skip_empty, "id_prefix": prefix}
    if exclude_documents:
        settings["excluded_documents"] = len(selection.skipped["excluded"])
    if method == "sentence":
        settings["remove_sentence"] = remove_sentence
    if method == "span":
        settings.update(span_ratio=[low, high], min_span_words=min_span_words, max_span_words=max_span_words)
    query_set = QuerySet(queries, sources, f"crop-{method}", {"settings": settings, "seed": seed}, counts,
                         removed=removed, corpus=collection.corpus.store_path.name)
    return apply_filters(query_set, filters, collection)
