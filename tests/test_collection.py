"""Dataset references: registered names via mirror / cache / download, BEIR folders, ir_datasets ids."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
from collections import namedtuple
from pathlib import Path

import pytest

from retrieval_kd.data import DatasetUnavailableError, get_manifest, list_datasets, load_collection, register
from retrieval_kd.data.download import ChecksumError
from retrieval_kd.data.registry import FileSpec, Manifest

from .conftest import write_jsonl


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


def _numbered(folder: Path, queries: list[str], docs: list[str]) -> Path:
    """A BEIR folder whose query i and document i share the id str(i) (as in ArguAna, or by chance, Cranfield)."""
    write_jsonl(folder / "corpus.jsonl", [{"_id": str(i), "title": "", "text": t} for i, t in enumerate(docs)])
    write_jsonl(folder / "queries.jsonl", [{"_id": str(i), "text": t} for i, t in enumerate(queries)])
    (folder / "qrels").mkdir()
    judged = "".join(f"{i}\t{len(docs) - 1}\t1\n" for i in range(len(queries)))  # each query: the last document
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + judged)
    return folder


DOCS = ["Zoos should close: animals suffer in cages.", "Nuclear power is clean.", "Zoos protect rare species."]


def test_identical_ids_are_dropped_only_where_queries_are_their_documents(tmp_path, capsys):
    from retrieval_kd.cli.main import main

    # ArguAna-like: each query is the text of its own document (punctuation and case aside)
    arguana = _numbered(tmp_path / "arguana", ["zoos should close animals suffer in cages", "Nuclear power is clean"],
                        DOCS)
    # Cranfield-like: query 0 and document 0 share an id by chance
    numbered = _numbered(tmp_path / "numbered", ["why keep zoos open", "is nuclear power clean"], DOCS)
    assert load_collection(str(arguana)).conventions.ignore_identical_ids is None  # decided from the data
    assert load_collection(str(arguana)).conventions_for("test").ignore_identical_ids is True
    assert load_collection(str(numbered)).conventions_for("test").ignore_identical_ids is False
    assert get_manifest("cranfield").conventions.ignore_identical_ids is False  # a registered set's manifest says

    run = tmp_path / "r.run"  # each query's own id first, the relevant document 2 second
    run.write_text("0 Q0 0 1 2.0 x\n0 Q0 2 2 1.0 x\n1 Q0 1 1 2.0 x\n1 Q0 2 2 1.0 x\n")
    scores = {}
    for name, folder, extra in [("arguana", arguana, []), ("numbered", numbered, []),
                                ("arguana-kept", arguana, ["--no-ignore-identical-ids"])]:
        out = tmp_path / f"{name}.json"
        assert main(["eval", "--dataset", str(folder), "--split", "test", "--run", str(run), "--metrics",
                     "ndcg@10", "--output-json", str(out), *extra]) == 0
        scores[name] = json.loads(out.read_text())["ndcg@10"]
    capsys.readouterr()
    assert scores["arguana"] == pytest.approx(1.0)  # own id dropped: document 2 first
    assert scores["numbered"] == pytest.approx(1 / math.log2(3))  # a different document 0 stays ranked first
    assert scores["arguana-kept"] == pytest.approx(1 / math.log2(3))
    out = tmp_path / "forced.json"  # by hand, the numbered folder's own ids go too
    assert main(["eval", "--dataset", str(numbered), "--split", "test", "--run", str(run), "--metrics", "ndcg@10",
                 "--output-json", str(out), "--ignore-identical-ids"]) == 0
    assert json.loads(out.read_text())["ndcg@10"] == pytest.approx(1.0)
    assert main(["data", "check", str(arguana)]) == 0
    assert "a query's own id dropped from its results unless judged relevant" in capsys.readouterr().out


@pytest.mark.parametrize("queries, dropped", [
    (["zoos should close animals suffer in cages", "Nuclear power is clean", "why keep zoos open"], True),  # 2 of 3
    (["zoos should close animals suffer in cages", "is nuclear power clean", "why keep zoos open"], False),  # 1 of 3
    (["zoos", "nuclear power", "rare species"], False),  # fewer than 3 words occur in any text
    (["oos should clo", "uclear power is clea", "oos protect rare speci"], False),  # inside words, not whole words
])
def test_the_identical_id_rule_needs_most_queries_to_be_their_documents(tmp_path, queries, dropped):
    folder = _numbered(tmp_path / "beir", queries, DOCS)
    assert load_collection(str(folder)).conventions_for("test").ignore_identical_ids is dropped


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
    from retrieval_kd.data.collection import load_irds

    c = load_irds("beir/fake/test", dataset=FakeIrds())
    assert c.conventions.ignore_identical_ids is None  # BEIR's collections: decided from the data
    assert load_irds("fake/test", dataset=FakeIrds()).conventions.ignore_identical_ids is False  # TREC's: never
    assert c.name == "irds:beir/fake/test"
    assert c.splits == ["test"]
    assert c.qrels("test") == {"q1": {"d1": 1}}
    assert c.corpus["d1"] == {"_id": "d1", "title": "T", "text": "alpha"}


# -- integrity of files found in the mirror or the cache ------------------------------------------------------------
CORPUS_LINES = b"".join(b'{"_id": "d%d", "title": "", "text": "passage %d"}\n' % (i, i) for i in range(6))
QUERIES = b'{"_id": "q1", "text": "passage one"}\n{"_id": "q2", "text": "passage two"}\n'
QRELS = b"q1\t0\td1\t1\nq2\t0\td2\t1\n"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tiny_mirrored(tmp_path: Path, monkeypatch, name: str) -> Path:
    """A registered three-file dataset with sha256s, in a private mirror (corpus gzipped there)."""
    folder = tmp_path / "mirror" / name
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl.gz").write_bytes(gzip.compress(CORPUS_LINES, mtime=0))
    (folder / "queries.jsonl").write_bytes(QUERIES)
    (folder / "qrels" / "test.tsv").write_bytes(QRELS)
    register(Manifest(
        name=name, mirror_folder=name,
        corpus=FileSpec(path="corpus.jsonl", sha256=_sha(CORPUS_LINES)),
        queries=FileSpec(path="queries.jsonl", sha256=_sha(QUERIES)),
        qrels={"test": FileSpec(path="qrels/test.tsv", sha256=_sha(QRELS))},
    ))
    monkeypatch.setenv("RKD_DATA_MIRROR", str(tmp_path / "mirror"))
    return folder


def test_mirror_files_are_checked_against_the_manifest(tmp_path, monkeypatch):
    from retrieval_kd.errors import IntegrityError

    folder = _tiny_mirrored(tmp_path, monkeypatch, "tiny-mirror-sha")
    c = load_collection("tiny-mirror-sha")  # the gzipped corpus is compared over its content
    assert len(c.corpus) == 6 and c.qrels("test") == {"q1": {"d1": 1}, "q2": {"d2": 1}}
    cut = QRELS.splitlines(keepends=True)[0]  # a copy with lines cut
    (folder / "qrels" / "test.tsv").write_bytes(cut)
    with pytest.raises(IntegrityError) as info:
        load_collection("tiny-mirror-sha")
    message = str(info.value)
    assert str(folder / "qrels" / "test.tsv") in message
    assert _sha(QRELS) in message and _sha(cut) in message  # expected and actual
    assert "replace it in the mirror" in message and "\n" not in message
    lines = CORPUS_LINES.splitlines(keepends=True)
    (folder / "qrels" / "test.tsv").write_bytes(QRELS)
    (folder / "corpus.jsonl.gz").write_bytes(gzip.compress(b"".join(lines[:-1]), mtime=0))
    with pytest.raises(IntegrityError, match=r"corpus\.jsonl\.gz: content sha256 .* differs from " + _sha(CORPUS_LINES)):
        load_collection("tiny-mirror-sha")


def test_a_cut_mirror_copy_fails_rkd_data_check_in_one_line(tmp_path, monkeypatch, capsys):
    from retrieval_kd.cli.main import main

    folder = _tiny_mirrored(tmp_path, monkeypatch, "tiny-mirror-check")
    assert main(["data", "check", "tiny-mirror-check"]) == 0
    assert "3 of 3 files match the manifest" in capsys.readouterr().out
    (folder / "queries.jsonl").write_bytes(QUERIES.splitlines(keepends=True)[0])
    assert main(["data", "check", "tiny-mirror-check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rkd data: error: ") and "queries.jsonl" in err and "\n" not in err


def test_a_corrupt_gzip_mirror_copy_is_named(tmp_path, monkeypatch):
    from retrieval_kd.data import DataFormatError

    folder = _tiny_mirrored(tmp_path, monkeypatch, "tiny-mirror-gz")
    packed = (folder / "corpus.jsonl.gz").read_bytes()
    (folder / "corpus.jsonl.gz").write_bytes(packed[:-12])
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl\.gz: cannot read its content"):
        load_collection("tiny-mirror-gz")


def test_digests_are_remembered_by_path_size_and_mtime(tmp_path, monkeypatch):
    import os

    from retrieval_kd.utils import fs

    folder = _tiny_mirrored(tmp_path, monkeypatch, "tiny-mirror-memo")
    hashed = []
    real = fs.sha256_file
    monkeypatch.setattr(fs, "sha256_file", lambda path, gunzip=False: hashed.append(Path(path).name) or real(path, gunzip))
    load_collection("tiny-mirror-memo")
    assert sorted(hashed) == ["corpus.jsonl.gz", "queries.jsonl", "test.tsv"]
    hashed.clear()
    load_collection("tiny-mirror-memo")
    assert hashed == [], "a second start hashes nothing"
    os.utime(folder / "queries.jsonl", ns=(1, 1))  # touched: hashed again, and still matching
    load_collection("tiny-mirror-memo")
    assert hashed == ["queries.jsonl"]


def test_a_cached_file_is_checked_too(tmp_path, monkeypatch):
    from retrieval_kd.errors import IntegrityError
    from retrieval_kd.paths import cache_dir

    monkeypatch.delenv("RKD_DATA_MIRROR", raising=False)
    content = b"1\tfirst query\n2\tsecond query\n"
    manifest = _manifest(tmp_path, content, hashlib.sha256(content).hexdigest())
    manifest = Manifest(**{**manifest.__dict__, "name": "tiny-cache-sha"})
    (tmp_path / "served" / "qrels.txt").write_text("1 0 d1 1\n")
    register(manifest)
    load_collection("tiny-cache-sha")
    cached = cache_dir() / "tiny-cache-sha" / "topics.tsv"
    cached.write_bytes(content.splitlines(keepends=True)[0])
    with pytest.raises(IntegrityError, match=r"topics\.tsv: content sha256 .* delete it and run again"):
        load_collection("tiny-cache-sha")
    cached.unlink()  # as the message says: fetched anew, and right again
    assert load_collection("tiny-cache-sha").all_queries == {"1": "first query", "2": "second query"}


def test_corpus_store_key_and_manifest_check_share_one_digest_helper(tmp_path):
    import retrieval_kd.data.collection as collection
    import retrieval_kd.data.corpus as corpus
    from retrieval_kd.utils.fs import sha256_memo

    assert corpus.sha256_memo is sha256_memo and collection.sha256_memo is sha256_memo


def test_a_malformed_manifest_is_one_config_error(tmp_path):
    from retrieval_kd.errors import ConfigError

    path = tmp_path / "bad.yaml"
    for text, message in [("name: x\nconventions: {relevance_levle: 2}\n", "malformed dataset manifest"),
                          ("name: [x\n", "not a valid YAML manifest"), ("- a list\n", "a dataset manifest is a YAML mapping")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=rf"bad\.yaml: {message}"):
            Manifest.from_yaml(path)
