"""Training queries made from a corpus, for distillation without human labels.

* :mod:`~retrieval_kd.queries.generate`: a language model writes them (few-shot prompted causal LMs as in
  Promptagator, or seq2seq doc2query models as GPL uses), resumably;
* :mod:`~retrieval_kd.queries.crop`: cut from the documents, no model (title, inverse cloze task, Contriever
  cropping);
* :mod:`~retrieval_kd.queries.importing`: read from BEIR's generated-queries files, GPL's output or a TSV;
* :mod:`~retrieval_kd.queries.filters`: length limits, duplicates, round-trip consistency, a seeded cap;
* :mod:`~retrieval_kd.queries.pseudo_qrels`: positives without labels (the source document, the teacher's top
  ranked), shaped like qrels for the students' pair building;
* :mod:`~retrieval_kd.queries.query_set`: the :class:`QuerySet` and its files (``queries.jsonl`` + provenance).

``rkd queries`` is the command line of all of these.
"""

from __future__ import annotations

from retrieval_kd.queries.crop import CROP_METHODS, crop_queries, sentence_spans
from retrieval_kd.queries.documents import DocumentSelection, select_documents
from retrieval_kd.queries.examples import DEFAULT_EXAMPLES, DEFAULT_PROMPT, Example, read_examples
from retrieval_kd.queries.filters import QueryFilters, apply_filters, normalise_query, sample_queries
from retrieval_kd.queries.generate import GENERATOR_DTYPES, QueryGenerator, auto_dtype, clean_query, generate_queries
from retrieval_kd.queries.importing import IMPORT_FORMATS, import_queries
from retrieval_kd.queries.pseudo_qrels import pseudo_qrels
from retrieval_kd.queries.query_set import QuerySet, merge_query_sets, read_query_set, sidecar_path, write_query_set

__all__ = ["CROP_METHODS", "DEFAULT_EXAMPLES", "DEFAULT_PROMPT", "GENERATOR_DTYPES", "IMPORT_FORMATS",
           "DocumentSelection", "Example", "QueryFilters", "QueryGenerator", "QuerySet", "apply_filters", "auto_dtype",
           "clean_query", "crop_queries",
           "generate_queries", "import_queries", "merge_query_sets", "normalise_query", "pseudo_qrels",
           "read_examples", "read_query_set", "sample_queries", "select_documents", "sentence_spans", "sidecar_path",
           "write_query_set"]
