"""ir_datasets ids (``irds:beir/scifact/test``) as collections.

ir_datasets downloads and verifies the official files itself. This adapter exports its docs, queries and
qrels once, streaming, into BEIR layout under ``data/cache/irds/<id>/`` (written atomically), so the rest of the
project sees one kind of collection. The qrels split is the last component of the id that names a split
(``train``, ``dev``, ``test``, ...), else ``test``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from retrieval_kd.data.formats import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["export_irds", "irds_folder"]

_SPLITS = {"train", "dev", "test", "validation", "val", "eval"}


def _split_of(dataset_id: str) -> str:
    """The split an id's qrels are: its last component naming one (``msmarco-passage/train/judged`` -> train,
    ``msmarco-passage/dev/small`` -> dev), else ``test`` (``msmarco-passage/trec-dl-2019/judged``)."""
    for part in reversed(dataset_id.rstrip("/").split("/")):
        if part in _SPLITS:
            return part
    return "test"


def _text_of(obj) -> str:
    for field in ("text", "body", "abstract", "passage", "default_text"):
        value = getattr(obj, field, None)
        if callable(value):
            value = value()
        if isinstance(value, str):
            return value
    raise ValueError(f"cannot find a text field in {type(obj).__name__} (fields: {getattr(obj, '_fields', ())})")


def export_irds(dataset, folder: Path, split: str) -> Path:
    """Write an ir_datasets dataset (anything with docs_iter/queries_iter/qrels_iter) in BEIR layout."""
    from retrieval_kd.utils.progress import progress

    folder.mkdir(parents=True, exist_ok=True)
    if dataset.has_docs() and not (folder / "corpus.jsonl").exists():
        with atomic_write(folder / "corpus.jsonl") as fh:
            for doc in progress(dataset.docs_iter(), desc="export docs", unit="doc"):
                title = getattr(doc, "title", "") or ""
                fh.write(json.dumps({"_id": doc.doc_id, "title": title, "text": _text_of(doc)}) + "\n")
    if dataset.has_queries() and not (folder / "queries.jsonl").exists():
        with atomic_write(folder / "queries.jsonl") as fh:
            for query in dataset.queries_iter():
                fh.write(json.dumps({"_id": query.query_id, "text": _text_of(query)}) + "\n")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if dataset.has_qrels() and not qrels_path.exists():
        with atomic_write(qrels_path) as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for qrel in dataset.qrels_iter():
                fh.write(f"{qrel.query_id}\t{qrel.doc_id}\t{int(qrel.relevance)}\n")
    return folder


def irds_folder(dataset_id: str, dataset=None) -> Path:
    """The BEIR-layout folder of ``dataset_id``, exported once into the cache (``dataset`` may be passed in
    directly, e.g. in tests). :func:`~retrieval_kd.data.collection.load_collection` reads it as a collection."""
    from retrieval_kd.paths import cache_dir

    if dataset is None:
        import ir_datasets

        dataset = ir_datasets.load(dataset_id)
    return export_irds(dataset, cache_dir() / "irds" / dataset_id.replace("/", "__"), _split_of(dataset_id))
