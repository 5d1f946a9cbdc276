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


# -- non-finite numbers, grades ------------------------------------------------------------------------------------
@pytest.mark.parametrize("score", ["nan", "inf", "-inf", "NaN", "1e400"])
def test_non_finite_run_score_names_file_and_line(tmp_path, score):
    path = tmp_path / "bad.run"
    path.write_text(f"q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 {score} t\n")
    with pytest.raises(DataFormatError, match=rf"bad\.run:2: score '{score}' is not a finite number"):
        read_run(path)


def test_write_run_refuses_non_finite_scores_and_bad_ids(tmp_path):
    path = tmp_path / "out.run"
    for bad in (float("nan"), float("inf")):
        with pytest.raises(DataFormatError, match=r"query 'q2', doc 'd9' has score (nan|inf)"):
            write_run({"q1": {"d1": 1.0}, "q2": {"d8": 0.5, "d9": bad}}, path)
        assert not path.exists(), "nothing is written"
    with pytest.raises(DataFormatError, match=r"cannot write doc id 'd 1' of query 'q1'"):
        write_run({"q1": {"d 1": 1.0}}, path)
    with pytest.raises(DataFormatError, match=r"cannot write query id ''"):
        write_run({"": {"d1": 1.0}}, path)
    assert not path.exists()
    # huge but finite scores whose sum overflows are still fine
    write_run({"q1": {"d1": 1e308, "d2": 1e308}}, path)
    assert set(read_run(path)["q1"]) == {"d1", "d2"}


@pytest.mark.parametrize("grade, message", [("0.9", "is not an integer"), ("inf", "is not an integer"),
                                            ("nan", "is not an integer"), ("1e12", "is out of range")])
def test_bad_qrels_grade_names_the_line(tmp_path, grade, message):
    path = tmp_path / "q.txt"
    path.write_text(f"q1 0 d1 1\nq1 0 d2 {grade}\n")
    with pytest.raises(DataFormatError, match=rf"q\.txt:2: relevance grade '{grade}' {message}"):
        read_qrels(path)


def test_negative_and_float_written_integer_grades_are_legal(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("q1 0 d1 -2\nq1 0 d2 1.0\nq1 0 d3 3\n")
    assert read_qrels(path) == {"q1": {"d1": -2, "d2": 1, "d3": 3}}


def test_qrels_header_after_blank_lines(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("\n\nquery-id\tcorpus-id\tscore\nq1\td1\t1\n")
    assert read_qrels(path) == {"q1": {"d1": 1}}


def test_write_qrels_refuses_fractional_grades(tmp_path):
    with pytest.raises(DataFormatError, match=r"query 'q1', doc 'd1' has grade 0.9"):
        write_qrels({"q1": {"d1": 0.9}}, tmp_path / "q.txt")


# -- bytes that are not text, broken gzip, empty files ---------------------------------------------------------------
def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


READERS = {
    "run": (read_run, b"q1 Q0 d1 1 2.0 t\nq1 Q0 d\xff2 2 1.0 t\n"),
    "qrels": (read_qrels, b"q1 0 d1 1\nq1 0 d\xe92 1\n"),
    "queries.tsv": (read_queries, b"1\tfirst\n2\tcaf\xe9\n"),
    "queries.jsonl": (read_queries, b'{"_id": "1", "text": "a"}\n{"_id": "2", "text": "\xc3"}\n'),
    "corpus.jsonl": (lambda p: list(iter_jsonl(p)), b'{"_id": "1"}\n{"_id": "\x80"}\n'),
}


@pytest.mark.parametrize("name", list(READERS))
@pytest.mark.parametrize("gzipped", [False, True])
def test_non_utf8_names_file_and_line(tmp_path, name, gzipped):
    reader, data = READERS[name]
    path = tmp_path / name
    path.write_bytes(_gz(data) if gzipped else data)
    with pytest.raises(DataFormatError, match=rf"{name}:2: not UTF-8 text"):
        reader(path)


@pytest.mark.parametrize("name", list(READERS))
def test_truncated_or_corrupt_gzip_names_the_file(tmp_path, name):
    reader, data = READERS[name]
    good = data.replace(b"\xff", b"x").replace(b"\xe9", b"e").replace(b"\xc3", b"c").replace(b"\x80", b"0")
    packed = _gz(good * 50)
    path = tmp_path / name
    path.write_bytes(packed[: len(packed) // 2])  # cut in the middle
    with pytest.raises(DataFormatError, match=rf"{name}: the gzip data is truncated or corrupt"):
        reader(path)
    corrupt = bytearray(packed)
    corrupt[12:20] = b"\x00" * 8  # damaged deflate data
    path.write_bytes(bytes(corrupt))
    with pytest.raises(DataFormatError, match=rf"{name}: the gzip data is truncated or corrupt"):
        reader(path)


@pytest.mark.parametrize("reader, what", [(read_run, "no results"), (read_qrels, "no judgements"),
                                          (read_queries, "no queries")])
def test_empty_file_says_so(tmp_path, reader, what):
    for content in (b"", b"\n\n", _gz(b"")):
        path = tmp_path / "empty.tsv"
        path.write_bytes(content)
        with pytest.raises(DataFormatError, match=rf"empty\.tsv: holds {what}"):
            reader(path)
    (tmp_path / "header.tsv").write_text("query-id\tcorpus-id\tscore\n")
    with pytest.raises(DataFormatError, match="holds no judgements"):
        read_qrels(tmp_path / "header.tsv")


def test_json_lines_that_are_not_text_or_not_ids(tmp_path):
    path = tmp_path / "q.jsonl"
    cases = {
        '{"_id": "1", "text": NaN}': r"q\.jsonl:1: malformed JSON \(NaN is not valid JSON\)",
        '{"_id": "1", "text": "\\ud800"}': r"q\.jsonl:1: a string holds an unpaired UTF-16 surrogate",
        '{"_id": null, "text": "x"}': r"q\.jsonl:1: query id must be a string or an integer, got None",
        '{"_id": "", "text": "x"}': r"q\.jsonl:1: query id is empty",
        '{"_id": "1", "text": ["x"]}': r"q\.jsonl:1: 'text' must be a string, got list",
        "[" * 100_000: r"q\.jsonl:1: malformed JSON",
    }
    for line, message in cases.items():
        path.write_text(line + "\n")
        with pytest.raises(DataFormatError, match=message):
            read_queries(path)
    path.write_text('{"_id": 7, "text": "smile \\ud83d\\ude00"}\n')  # an integer id and a surrogate *pair* are fine
    assert read_queries(path) == {"7": "smile \U0001f600"}


def test_lone_carriage_returns_end_lines(tmp_path):
    path = tmp_path / "topics.txt"
    path.write_bytes(b"1\tone\r2\ttwo\r\n3\tthree")
    assert read_queries(path) == {"1": "one", "2": "two", "3": "three"}


def test_data_format_error_is_an_rkd_error_and_a_value_error():
    from retrieval_kd.errors import RkdError

    assert issubclass(DataFormatError, RkdError) and issubclass(DataFormatError, ValueError)
