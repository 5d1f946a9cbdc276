"""Datasets: registered collections, BEIR folders and ir_datasets ids; corpus, queries, qrels, TREC runs."""

from __future__ import annotations

from retrieval_kd.data.collection import Collection, DatasetUnavailableError, load_collection
from retrieval_kd.data.corpus import Corpus
from retrieval_kd.data.formats import (
    DataFormatError,
    read_qrels,
    read_queries,
    read_run,
    write_qrels,
    write_run,
)
from retrieval_kd.data.registry import Conventions, Manifest, get_manifest, list_datasets, register

__all__ = [
    "Collection",
    "Conventions",
    "Corpus",
    "DataFormatError",
    "DatasetUnavailableError",
    "Manifest",
    "get_manifest",
    "list_datasets",
    "load_collection",
    "read_qrels",
    "read_queries",
    "read_run",
    "register",
    "write_qrels",
    "write_run",
]
