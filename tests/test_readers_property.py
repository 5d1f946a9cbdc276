"""Property tests: whatever bytes a file holds (plain, gzipped, cut or corrupt gzip), a reader returns or raises the
project's own error (:class:`DataFormatError`, an :class:`RkdError`) naming the file, never a raw exception; and
what the writers write, the readers read back unchanged."""

from __future__ import annotations

import gzip
import itertools
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from retrieval_kd.data import Corpus, DataFormatError
from retrieval_kd.data.formats import iter_jsonl, read_qrels, read_queries, read_run, write_qrels, write_run
from retrieval_kd.errors import RkdError

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# lines a reader may meet: the bad cases of issue 18 (NaN, fractional grades, null ids, ...) and plain junk
FRAGMENTS = [
    "q2 Q0 d3 1 nan t", "q3 Q0 d4 1 -inf t", "q2 Q0 d9 7 1e400 x", "query-id\tcorpus-id\tscore", "q1 0 d2 0.9",
    "q1 0 d3 -2", "q1 0 d4 1.0", "q\t\t1", "q1 0 d5 inf", "q1 0 d6 99999999999999999999", "\tno id",
    '{"_id": null, "text": "x"}', '{"text": "no id"}', '{"_id": "2", "text": ["x"]}', '{"_id": "3", "text": NaN}',
    '{"_id": "\\ud800", "text": "x"}', '{"_id": "a\\u0000"}', '{"_id": ""}', "[1, 2]", "{", '"just a string"',
    "[" * 3000,
]
_junk = st.one_of(
    st.sampled_from(FRAGMENTS).map(str.encode),
    st.text(max_size=30).map(lambda s: s.encode("utf-8", "surrogatepass")),  # lone surrogates: not UTF-8
    st.binary(max_size=20),
)
_ident = st.integers(0, 10**6).map(str)
_words = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=20)
_score = st.floats(allow_nan=False, allow_infinity=False)

# well-formed lines of each format, so that the readers' good paths are walked too
VALID = {
    "run": st.builds(lambda q, d, r, s: f"{q} Q0 d{d} {r} {s!r} tag", _ident, _ident, st.integers(1, 1000), _score),
    "qrels": st.one_of(st.builds(lambda q, d, g: f"{q}\td{d}\t{g}", _ident, _ident, st.integers(-2, 3)),
                       st.builds(lambda q, d, g: f"{q} 0 d{d} {g}.0", _ident, _ident, st.integers(0, 3))),
    "queries.tsv": st.builds(lambda q, t: f"{q}\t{t}", _ident, _words),
    "jsonl": st.builds(lambda i, t, title, ascii_: json.dumps({"_id": i, "title": title, "text": t},
                                                                ensure_ascii=ascii_),
                       st.one_of(_ident, st.integers(0, 10**6)), _words, st.one_of(st.none(), _words),
                       st.booleans()),
}


@st.composite
def file_bytes(draw, kind: str) -> bytes:
    """Well-formed lines, lines mixed with junk, or arbitrary bytes; plain, gzipped, cut short or damaged."""
    mode = draw(st.sampled_from(["clean", "clean", "mixed", "bytes"]))
    if mode == "bytes":
        data = draw(st.binary(max_size=300))
    else:
        clean = mode == "clean"
        line = VALID[kind].map(str.encode) if clean else st.one_of(VALID[kind].map(str.encode), _junk)
        sep = st.sampled_from([b"\n", b"\r\n"] if clean else [b"\n", b"\r\n", b"\r", b"\t", b" "])
        lines = draw(st.lists(st.tuples(line, sep), min_size=int(clean), max_size=10))
        data = (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + b"".join(a + b for a, b in lines)
    packing = draw(st.sampled_from(["plain", "plain", "gzip", "gzip", "cut", "flip"]))
    if packing == "plain":
        return data
    packed = gzip.compress(data, mtime=0)
    if packing == "gzip":
        return packed
    at = draw(st.integers(0, len(packed) - 1))
    if packing == "cut":
        return packed[:at]
    return packed[:at] + bytes([packed[at] ^ draw(st.integers(1, 255))]) + packed[at + 1:]


_counter = itertools.count()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("property")


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / f"{next(_counter)}-{name}"  # a new name each time: no digest memo can be stale
    path.write_bytes(data)
    return path


def _only_own_errors(fn, path: Path) -> None:
    try:
        fn(path)
        event("read")
    except RkdError as exc:
        event("refused")
        assert isinstance(exc, DataFormatError), type(exc)
        assert str(path) in str(exc), "the message names the file"
        assert "\n" not in str(exc), "one line"


@pytest.mark.parametrize("name", ["x.run", "noext"])
@SETTINGS
@given(data=file_bytes("run"))
def test_read_run_never_crashes(folder, name, data):
    _only_own_errors(read_run, _write(folder, name, data))


@pytest.mark.parametrize("name", ["qrels.tsv", "noext"])
@SETTINGS
@given(data=file_bytes("qrels"))
def test_read_qrels_never_crashes(folder, name, data):
    _only_own_errors(read_qrels, _write(folder, name, data))


@pytest.mark.parametrize("name, kind", [("queries.jsonl", "jsonl"), ("topics.tsv", "queries.tsv"),
                                        ("queries", "jsonl"), ("queries", "queries.tsv")])
@SETTINGS
@given(data=st.data())
def test_read_queries_never_crashes(folder, name, kind, data):
    data = data.draw(file_bytes(kind))
    _only_own_errors(read_queries, _write(folder, name, data))


@SETTINGS
@given(data=file_bytes("jsonl"))
def test_iter_jsonl_never_crashes(folder, data):
    _only_own_errors(lambda p: list(iter_jsonl(p)), _write(folder, "lines.jsonl", data))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=file_bytes("jsonl"))
def test_corpus_never_crashes_and_agrees_with_its_store(folder, data):
    path = _write(folder, "corpus.jsonl", data)

    def read(p):
        docs = list(Corpus(p, store_dir=folder / "stores"))
        corpus = Corpus(p, store_dir=folder / "stores")
        assert corpus.validate() == len(docs)  # the Arrow store holds what iteration yields
        assert corpus.has([d["_id"] for d in docs]).all()
        assert corpus.texts([docs[0]["_id"]], with_title=False) == [docs[0]["text"]]

    _only_own_errors(read, path)


# -- what is written reads back ----------------------------------------------------------------------------------
_id = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1, max_size=8)
_score = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9)


@SETTINGS
@given(run=st.dictionaries(_id, st.dictionaries(_id, _score, min_size=1, max_size=5), min_size=1, max_size=5))
def test_run_round_trip(folder, run):
    if any(len(i.split()) != 1 for q, docs in run.items() for i in (q, *docs)):
        with pytest.raises(DataFormatError, match="ids in a TREC file must be non-empty and hold no whitespace"):
            write_run(run, folder / f"{next(_counter)}.run")
        return
    back = read_run(write_run(run, folder / f"{next(_counter)}.run"))
    assert set(back) == set(run)
    for qid, docs in run.items():
        assert set(back[qid]) == set(docs)
        for did, score in docs.items():
            assert math.isclose(back[qid][did], float(f"{score:.6f}"), abs_tol=1e-6)


@SETTINGS
@given(qrels=st.dictionaries(_id, st.dictionaries(_id, st.integers(-3, 10**6), min_size=1, max_size=5),
                             min_size=1, max_size=5))
def test_qrels_round_trip(folder, qrels):
    if any(len(i.split()) != 1 for q, docs in qrels.items() for i in (q, *docs)):
        return
    assert read_qrels(write_qrels(qrels, folder / f"{next(_counter)}.txt")) == qrels
