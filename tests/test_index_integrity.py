"""Index folders are checked when opened: files that do not belong together, damage, another corpus's queries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from retrieval_kd.errors import IntegrityError
from retrieval_kd.index.dense import build_faiss_index, check_corpus, load_index, save_index
from retrieval_kd.index.sparse import SparseIndex


@pytest.fixture
def dense_folder(tmp_path):
    x = np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32)
    folder = tmp_path / "flat"
    save_index(build_faiss_index("flat", x), folder, [f"d{i}" for i in range(12)], {"type": "flat"})
    return folder


def _edit_ids(path, change):
    ids = json.loads(path.read_text())
    path.write_text(json.dumps(change(ids)))


@pytest.mark.parametrize("change, message", [
    (lambda ids: ids[1:] + ids[:1], "not the doc-id list the index was written with"),   # rotated
    (lambda ids: ids[:-1], "11 doc ids for an index of 12 vectors"),                     # shorter
    (lambda ids: ids[:-1] + ids[:1], "repeated doc ids"),
])
def test_doc_ids_that_do_not_match_the_faiss_index(dense_folder, change, message):
    _edit_ids(dense_folder / "docids.json", change)
    with pytest.raises(IntegrityError, match=message):
        load_index(dense_folder)


def test_damaged_dense_files_are_named(dense_folder):
    sidecar = dense_folder / "rkd_index.json"
    good = sidecar.read_text()
    sidecar.write_text(good[:-20])
    with pytest.raises(IntegrityError, match=r"rkd_index.json: not valid JSON"):
        load_index(dense_folder)
    sidecar.write_text(good)
    data = (dense_folder / "index.faiss").read_bytes()
    (dense_folder / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError, match=r"index.faiss: not a readable FAISS index"):
        load_index(dense_folder)
    (dense_folder / "index.faiss").write_bytes(b"\x00" * 64)
    with pytest.raises(IntegrityError, match=r"index.faiss: not a readable FAISS index"):
        load_index(dense_folder)


def test_sparse_index_checks(tmp_path):
    matrix = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0], [4, 0, 0]], dtype=np.float32))
    folder = tmp_path / "sparse"
    SparseIndex.build(matrix, ["a", "b", "c"], vocab=["x", "y", "z"]).save(folder)
    assert SparseIndex.load(folder)[0].doc_ids == ["a", "b", "c"]
    _edit_ids(folder / "doc_ids.json", lambda ids: ids[::-1])
    with pytest.raises(IntegrityError, match="reordered or edited"):
        SparseIndex.load(folder)
    _edit_ids(folder / "doc_ids.json", lambda ids: ids[::-1])
    (folder / "postings.npz").write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(IntegrityError, match="postings.npz: unreadable"):
        SparseIndex.load(folder)
    with pytest.raises(IntegrityError, match="not a dense FAISS index"):
        load_index(folder)


def test_bm25_index_doc_ids_checked(tiny_beir, tmp_path):
    from retrieval_kd.data import load_collection
    from retrieval_kd.search import BM25Index, bm25_index_for

    folder = tmp_path / "bm25"
    bm25_index_for(load_collection(str(tiny_beir)), folder)
    _edit_ids(folder / "docids.json", lambda ids: ids[1:] + ids[:1])
    with pytest.raises(IntegrityError, match="reordered or edited"):
        BM25Index.load(folder)


def test_an_index_searched_with_another_corpus_is_refused(tiny_beir, tmp_path, capsys):
    from retrieval_kd.cli.main import main
    from retrieval_kd.data import load_collection
    from retrieval_kd.index.dense import corpus_identity

    corpus = load_collection(str(tiny_beir)).corpus
    index = build_faiss_index("flat", np.eye(5, dtype=np.float32))
    save_index(index, tmp_path / "own", corpus.ids, {"type": "flat", **corpus_identity(corpus)})
    _, ids, meta = load_index(tmp_path / "own")
    check_corpus(meta, corpus, tmp_path / "own", ids)  # its own corpus: fine
    other = tmp_path / "other"
    other.mkdir()
    (other / "corpus.jsonl").write_text((tiny_beir / "corpus.jsonl").read_text().replace("Goldfish", "Carp"))
    (other / "queries.jsonl").write_text((tiny_beir / "queries.jsonl").read_text())
    (other / "qrels").mkdir()
    (other / "qrels" / "test.tsv").write_text((tiny_beir / "qrels" / "test.tsv").read_text())
    with pytest.raises(IntegrityError, match="built on another corpus"):
        check_corpus(meta, load_collection(str(other)).corpus, tmp_path / "own", ids)
    rc = main(["-q", "search", "dense", "--index", str(tmp_path / "own"), "--model", "unused", "--dataset",
               str(other), "--split", "test", "--output", str(tmp_path / "run.trec")])
    assert rc == 2 and "built on another corpus" in capsys.readouterr().err
    # an index of bare embeddings records no corpus: its doc ids are checked instead
    save_index(index, tmp_path / "bare", ["x1", "x2", "x3", "x4", "x5"], {"type": "flat", "corpus_key": None})
    rc = main(["-q", "search", "dense", "--index", str(tmp_path / "bare"), "--model", "unused", "--dataset",
               str(tiny_beir), "--split", "test", "--output", str(tmp_path / "run.trec")])
    assert rc == 2 and "none of its doc ids (e.g. 'x1') is in" in capsys.readouterr().err
    assert not (tmp_path / "run.trec").exists()
