"""File formats: each bad-input case fails loudly, naming file and line; odd-but-valid encodings read right."""

from __future__ import annotations

import gzip
import logging

import pytest

from retrieval_kd.data.formats import (
    DataFormatError,
    atomic_write,
    iter_jsonl,
    read_qrels,
    read_queries,
    read_run,
    write_qrels,
    write_run,
)


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "queries.jsonl"
    path.write_text('{"_id": "1", "text": "ok"}\n{"_id": "2", "text": broken}\n')
    with pytest.raises(DataFormatError, match=r"queries\.jsonl:2: malformed JSON"):
        read_queries(path)


def test_json_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "1"}\n[1, 2]\n')
    with pytest.raises(DataFormatError, match=r"c\.jsonl:2: expected a JSON object"):
        list(iter_jsonl(path))


def test_crlf_bom_and_gzip_read_like_plain(tmp_path):
    lines = ['{"_id": "1", "text": "alpha"}', '{"_id": "2", "text": "beta"}']
    plain = tmp_path / "plain.jsonl"
    plain.write_text("\n".join(lines) + "\n")
    crlf_bom = tmp_path / "crlf.jsonl"
    crlf_bom.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n").encode())
    gz = tmp_path / "gz.jsonl.gz"
    with gzip.open(gz, "wb") as fh:
        fh.write(b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n").encode())
    no_suffix_gz = tmp_path / "queries_gz_without_suffix.jsonl"
    no_suffix_gz.write_bytes(gz.read_bytes())
    expected = {"1": "alpha", "2": "beta"}
    for path in (plain, crlf_bom, gz, no_suffix_gz):
        assert read_queries(path) == expected, path


def test_duplicate_query_id_is_an_error(tmp_path):
    path = tmp_path / "queries.jsonl"
    path.write_text('{"_id": "7", "text": "a"}\n{"_id": "8", "text": "b"}\n{"_id": "7", "text": "c"}\n')
    with pytest.raises(DataFormatError, match=r"queries\.jsonl:3: duplicate query id '7'"):
        read_queries(path)


def test_empty_query_text_warns_with_count(tmp_path, caplog):
    path = tmp_path / "queries.jsonl"
    path.write_text('{"_id": "1", "text": ""}\n{"_id": "2", "text": "  "}\n{"_id": "3", "text": "x"}\n')
    with caplog.at_level(logging.WARNING):
        queries = read_queries(path)
    assert len(queries) == 3
    assert "2 queries have empty text" in caplog.text


def test_query_tsv(tmp_path):
    path = tmp_path / "topics.txt"
    path.write_text("156493\tdo goldfish grow\r\n1110199\twhat is wifi vs bluetooth\r\n")
    assert read_queries(path) == {"156493": "do goldfish grow", "1110199": "what is wifi vs bluetooth"}


def test_qrels_tsv_with_and_without_header_and_trec(tmp_path):
    with_header = tmp_path / "a.tsv"
    with_header.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\nq2\td3\t2\n")
    without = tmp_path / "b.tsv"
    without.write_text("q1\td1\t1\nq1\td2\t0\nq2\td3\t2\n")
    trec = tmp_path / "c.txt"
    trec.write_text("q1 0 d1 1\nq1 0 d2 0\nq2 Q0 d3 2\n")
    expected = {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}
    assert read_qrels(with_header) == expected
    assert read_qrels(without) == expected
    assert read_qrels(trec) == expected


def test_qrels_bad_lines(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("q1\td1\t1\nq1\td2\n")
    with pytest.raises(DataFormatError, match=r"q\.tsv:2: expected 3 columns"):
        read_qrels(path)
    path.write_text("q1\td1\t1\nq1\td2\tvery\n")
    with pytest.raises(DataFormatError, match=r"q\.tsv:2: relevance grade 'very'"):
        read_qrels(path)


def test_run_round_trip_plain_and_gzip(tmp_path):
    run = {"q1": {"d1": 2.5, "d2": 1.0, "d3": 1.0}, "q2": {"d9": -0.5}}
    for name in ("r.run", "r.run.gz"):
        path = write_run(run, tmp_path / name, tag="t")
        assert read_run(path) == run
    lines = (tmp_path / "r.run").read_text().splitlines()
    assert lines[0] == "q1 Q0 d1 1 2.500000 t"
    assert lines[1].split()[2:4] == ["d2", "2"]  # ties broken by doc id
    with open(tmp_path / "r.run.gz", "rb") as fh:
        assert fh.read(2) == b"\x1f\x8b"


def test_run_errors(tmp_path):
    path = tmp_path / "bad.run"
    path.write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d1 2 1.0 t\n")
    with pytest.raises(DataFormatError, match=r"bad\.run:2: doc 'd1' appears twice"):
        read_run(path)
    path.write_text("q1 Q0 d1 1 2.0\n")
    with pytest.raises(DataFormatError, match=r"bad\.run:1: a TREC run line has 6 columns"):
        read_run(path)


def test_qrels_write_read(tmp_path):
    qrels = {"q1": {"d1": 3, "d2": 0}}
    assert read_qrels(write_qrels(qrels, tmp_path / "q.txt")) == qrels


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as fh:
            fh.write("new, half written")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
