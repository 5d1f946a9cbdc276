"""Corpus: streaming iteration, the Arrow store for lookups, and bad input."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil

import pytest

from retrieval_kd.data import Corpus, DataFormatError
from tests.conftest import write_jsonl

DOCS = [
    {"_id": "a", "title": "T1", "text": "first"},
    {"_id": "b", "title": "", "text": "second"},
    {"_id": "10", "title": "T3", "text": "third"},
]


def test_iteration_streams_without_building_the_store(tmp_path):
    corpus = Corpus(write_jsonl(tmp_path / "corpus.jsonl", DOCS), store_dir=tmp_path / "stores")
    assert [d["_id"] for d in corpus] == ["a", "b", "10"]
    assert not (tmp_path / "stores").exists()


def test_lookup_by_id_and_texts(tmp_path):
    corpus = Corpus(write_jsonl(tmp_path / "corpus.jsonl", DOCS), store_dir=tmp_path / "stores")
    assert len(corpus) == 3
    assert corpus["10"] == {"_id": "10", "title": "T3", "text": "third"}
    assert "b" in corpus and "zz" not in corpus
    assert corpus.texts(["10", "a", "b"]) == ["T3 third", "T1 first", "second"]
    assert corpus.texts(["a"], with_title=False) == ["first"]
    assert corpus.ids == ["a", "b", "10"]
    with pytest.raises(KeyError, match="'zz' is not in"):
        corpus["zz"]
    with pytest.raises(KeyError, match="'zz'"):
        corpus.rows(["a", "zz"])
    # a second instance reuses the store on disk
    again = Corpus(tmp_path / "corpus.jsonl", store_dir=tmp_path / "stores")
    assert again["a"]["text"] == "first"
    assert len(list((tmp_path / "stores").glob("*.arrow"))) == 1


def test_the_store_follows_the_bytes_not_the_modification_time(tmp_path):
    """A mirror copied or touched again keeps its store (and the encodings keyed by its name); new bytes do not."""
    path = write_jsonl(tmp_path / "corpus.jsonl", DOCS)
    first = Corpus(path, store_dir=tmp_path / "stores").store_path
    os.utime(path, ns=(1, 1))  # same bytes, another mtime
    assert Corpus(path, store_dir=tmp_path / "stores").store_path == first
    copy = tmp_path / "mirror" / "corpus.jsonl"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    assert Corpus(copy, store_dir=tmp_path / "stores").store_path == first
    changed = [dict(DOCS[0], text="FIRST"), *DOCS[1:]]  # same size, other bytes
    write_jsonl(path, changed)
    assert path.stat().st_size == copy.stat().st_size
    assert Corpus(path, store_dir=tmp_path / "stores").store_path != first
    assert Corpus(path, store_dir=tmp_path / "stores")["a"]["text"] == "FIRST"


def test_gzip_crlf_bom_corpus(tmp_path):
    raw = "\r\n".join(json.dumps({"_id": d["_id"], "title": "", "text": d["text"]}) for d in DOCS) + "\r\n"
    path = tmp_path / "corpus.jsonl.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"\xef\xbb\xbf" + raw.encode())
    corpus = Corpus(path, store_dir=tmp_path / "stores")
    assert corpus.texts() == ["first", "second", "third"]


def test_duplicate_doc_id_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", DOCS + [{"_id": "b", "text": "again"}])
    with pytest.raises(DataFormatError, match="duplicate document id 'b'"):
        Corpus(path, store_dir=tmp_path / "stores").validate()
    assert not list((tmp_path / "stores").glob("*.arrow")), "a failed build must leave no store behind"


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "a", "text": "x"}\n\n{"_id": "b", "text": "y"\n')
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:3: malformed JSON"):
        Corpus(path, store_dir=tmp_path / "stores").validate()


def test_missing_id_field(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"title": "x", "text": "y"}])
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:1: a document needs an '_id'"):
        list(Corpus(path))


def test_empty_text_warns_with_count(tmp_path, caplog):
    path = write_jsonl(tmp_path / "corpus.jsonl", DOCS + [{"_id": "e1", "text": ""}, {"_id": "e2", "title": " "}])
    with caplog.at_level(logging.WARNING):
        assert Corpus(path, store_dir=tmp_path / "stores").validate() == 5
    assert "2 of 5 documents have empty title and text" in caplog.text


def test_hf_dataset_view(tmp_path):
    corpus = Corpus(write_jsonl(tmp_path / "corpus.jsonl", DOCS), store_dir=tmp_path / "stores")
    ds = corpus.to_hf_dataset()
    assert ds.num_rows == 3 and ds[2]["_id"] == "10"


def _gzip_lines(rows: list[dict]) -> bytes:
    return gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode(), mtime=0)


def test_non_utf8_bytes_name_file_and_line_in_iteration_and_store(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:2: not UTF-8 text"):
        list(Corpus(path))
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:2: not UTF-8 text"):
        Corpus(path, store_dir=tmp_path / "stores").validate()
    assert not list((tmp_path / "stores").glob("*.arrow*")), "a failed build must leave no store behind"


def test_truncated_gzip_corpus_names_the_file(tmp_path):
    packed = _gzip_lines([{"_id": f"d{i}", "text": f"text number {i} " * 8} for i in range(300)])
    path = tmp_path / "corpus.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl\.gz: the gzip data is truncated or corrupt after line"):
        list(Corpus(path))
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl\.gz: the gzip data is truncated or corrupt"):
        Corpus(path, store_dir=tmp_path / "stores").validate()
    assert not [p for p in (tmp_path / "stores").iterdir() if p.suffix in (".arrow", ".tmp")]


def test_empty_corpus_says_so(tmp_path):
    for content in (b"", b"\n \n", gzip.compress(b"")):
        path = tmp_path / "corpus.jsonl"
        path.write_bytes(content)
        with pytest.raises(DataFormatError, match=r"corpus\.jsonl: holds no documents"):
            list(Corpus(path))
        with pytest.raises(DataFormatError, match=r"corpus\.jsonl: holds no documents"):
            Corpus(path, store_dir=tmp_path / "stores").validate()


def test_ids_must_be_strings_or_integers(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": 1, "text": "x"}, {"_id": None, "text": "y"}])
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:2: document id must be a string or an integer, got None"):
        list(Corpus(path))


def test_has_is_a_vectorised_membership_mask(tmp_path):
    corpus = Corpus(write_jsonl(tmp_path / "corpus.jsonl", DOCS), store_dir=tmp_path / "stores")
    assert corpus.has(["10", "zz", "a", "0", "b"]).tolist() == [True, False, True, False, True]
    assert corpus.has([]).tolist() == []
    assert corpus.rows(["10", "a"]).tolist() == [2, 0]


def test_a_directory_is_not_a_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus file not found"):
        Corpus(tmp_path)
