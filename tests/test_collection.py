"""Dataset references: registered names via mirror / cache / download, BEIR folders, ir_datasets ids."""

from __future__ import annotations

import gzip
import hashlib
import logging
from collections import namedtuple
from pathlib import Path

import pytest

from retrieval_kd.data import DatasetUnavailableError, get_manifest, list_datasets, load_collection, register
from retrieval_kd.data.download import ChecksumError
from retrieval_kd.data.registry import FileSpec, Manifest


def test_registered_names():
    names = list_datasets()
    for name in ("scifact", "trec-dl-2019-passage", "cranfield", "msmarco-passage-dl19", "msmarco-passage-dl20",
                 "msmarco-passage-dev-small"):
        assert name in names
    dl = get_manifest("trec-dl-2019-passage")
    assert dl.conventions.relevance_level == 2
    assert dl.license and dl.citation and dl.qrels["test"].url.startswith("https://")
    assert get_manifest("scifact").archive["url"].endswith("scifact.zip")


def test_scifact_from_mirror(mirror):
    c = load_collection("scifact")
    assert c.splits == ["train", "test"]
    assert len(c.queries("test")) == 300 and len(c.queries("train")) == 809
    assert len(c.all_queries) == 1109
    assert sum(len(v) for v in c.qrels("test").values()) == 339
    assert len(c.corpus) == 5183
    assert str(c.corpus.path).startswith(str(mirror))


def test_trec_dl_from_mirror(mirror):
    c = load_collection("trec-dl-2019-passage")
    qrels = c.qrels("test")
    assert len(qrels) == 43 and sum(len(v) for v in qrels.values()) == 9260
    assert len(c.queries("test")) == 43
    assert c.queries("test")["156493"] == "do goldfish grow"


def test_topics_only_dataset(mirror):
    c = load_collection("msmarco-passage-dl20")
    assert c.corpus is None
    assert len(c.qrels("test")) == 54 and len(c.all_queries) == 200


def test_no_mirror_no_network_gives_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("RKD_DATA_MIRROR", str(tmp_path / "empty-mirror"))
    monkeypatch.setattr("retrieval_kd.data.collection.download", _offline)
    with pytest.raises(DatasetUnavailableError) as info:
        load_collection("msmarco-passage-dl19")
    message = str(info.value)
    assert "msmarco-passage-dl19" in message
    assert "https://raw.githubusercontent.com/castorini/anserini-tools" in message
    assert "RKD_DATA_MIRROR" in message


def _offline(url, *args, **kwargs):
    import urllib.error

    raise urllib.error.URLError("network unreachable")


def _manifest(tmp_path: Path, content: bytes, sha256: str) -> Manifest:
    served = tmp_path / "served" / "q.tsv.gz"
    served.parent.mkdir(parents=True)
    with gzip.open(served, "wb") as fh:
        fh.write(content)
    return Manifest(
        name="tiny-download", mirror_folder="tiny-download",
        queries=FileSpec(path="topics.tsv", url=served.as_uri(), sha256=sha256),
        qrels={"test": FileSpec(path="qrels.txt", url=(tmp_path / "served" / "qrels.txt").as_uri())},
    )


def test_download_verifies_checksum_and_caches(tmp_path, monkeypatch):
    monkeypatch.delenv("RKD_DATA_MIRROR", raising=False)
    content = b"1\tfirst query\n2\tsecond query\n"
    manifest = _manifest(tmp_path, content, hashlib.sha256(content).hexdigest())
    (tmp_path / "served" / "qrels.txt").write_text("1 0 d1 1\n")
    register(manifest)
    c = load_collection("tiny-download")
    assert c.all_queries == {"1": "first query", "2": "second query"}
    assert c.queries_path.read_bytes() == content  # stored un-gzipped in the cache
    (tmp_path / "served" / "q.tsv.gz").unlink()  # second load comes from the cache
    assert load_collection("tiny-download").all_queries == c.all_queries


def test_download_with_wrong_checksum_stores_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("RKD_DATA_MIRROR", raising=False)
    manifest = _manifest(tmp_path, b"1\tq\n", "0" * 64)
    manifest = Manifest(**{**manifest.__dict__, "name": "tiny-bad-sum"})
    register(manifest)
    with pytest.raises(ChecksumError, match="sha256"):
        load_collection("tiny-bad-sum")
    from retrieval_kd.paths import cache_dir

    folder = cache_dir() / "tiny-bad-sum"
    assert not folder.exists() or not any(folder.iterdir())


def test_beir_folder(tiny_beir):
    c = load_collection(str(tiny_beir))
    assert c.splits == ["test"]
    assert set(c.queries("test")) == {"q1", "q2"}  # judged queries only, as BEIR's loader
    assert set(c.queries()) == {"q1", "q2", "q3"}


def test_not_beir_layout(tmp_path):
    (tmp_path / "queries.jsonl").write_text("")
    with pytest.raises(DatasetUnavailableError, match="not in BEIR layout"):
        load_collection(str(tmp_path))


def test_unknown_reference():
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        load_collection("nope")


def test_qrels_naming_missing_docs_warn_with_count(tiny_beir, caplog):
    with open(tiny_beir / "qrels" / "test.tsv", "a") as fh:
        fh.write("q1\tghost1\t1\nq2\tghost2\t0\n")
    c = load_collection(str(tiny_beir))
    with caplog.at_level(logging.WARNING):
        qrels = c.qrels("test")
    assert "2 of 6 judged doc ids in split 'test' are not in the corpus" in caplog.text
    assert qrels["q1"]["ghost1"] == 1  # kept, and counted


Doc = namedtuple("Doc", "doc_id title text")
Query = namedtuple("Query", "query_id text")
Qrel = namedtuple("Qrel", "query_id doc_id relevance iteration")


class FakeIrds:
    """Duck-typed stand-in for an ir_datasets dataset (no network here)."""

    def has_docs(self):
        return True

    def has_queries(self):
        return True

    def has_qrels(self):
        return True

    def docs_iter(self):
        return iter([Doc("d1", "T", "alpha"), Doc("d2", "", "beta")])

    def queries_iter(self):
        return iter([Query("q1", "alpha?")])

    def qrels_iter(self):
        return iter([Qrel("q1", "d1", 1, "0")])


def test_irds_adapter_exports_beir_layout():
    from retrieval_kd.data.irds import load_irds

    c = load_irds("beir/fake/test", dataset=FakeIrds())
    assert c.name == "irds:beir/fake/test"
    assert c.splits == ["test"]
    assert c.qrels("test") == {"q1": {"d1": 1}}
    assert c.corpus["d1"] == {"_id": "d1", "title": "T", "text": "alpha"}
