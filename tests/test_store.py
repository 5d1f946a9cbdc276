"""Score store: exactly-once storage, resume after SIGKILL, torchrun shards merged, exports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retrieval_kd.data import load_collection, write_run
from retrieval_kd.teachers import BM25Teacher, ScoreStore, score_candidates
from retrieval_kd.teachers.export import export_jsonl, export_tsv, to_hf_dataset
from tests.conftest import write_jsonl

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def beir60(tmp_path) -> Path:
    """60 queries over 40 documents: enough batches to kill a run in the middle."""
    folder = tmp_path / "b60"
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    docs = [{"_id": f"d{i}", "title": "", "text": " ".join(words[(i + j) % 10] for j in range(i % 4 + 2))}
            for i in range(40)]
    write_jsonl(folder / "corpus.jsonl", docs)
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q{i}", "text": f"{words[i % 10]} {words[(i * 3) % 10]}"}
                                           for i in range(60)])
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("".join(f"q{i}\td{i % 40}\t1\n" for i in range(60)))
    return folder


def _candidates(folder: Path, out: Path) -> dict:
    from retrieval_kd.teachers import mine_candidates

    run = mine_candidates(load_collection(str(folder)), "test", k=10)
    write_run(run, out)
    return run


def _rows(store_dir: Path) -> list[tuple]:
    with ScoreStore(store_dir) as store:
        return sorted(store._conn.execute("SELECT fingerprint, qid, did, score FROM scores").fetchall())


def test_put_get_and_resume_skips_done(beir60, tmp_path):
    c = load_collection(str(beir60))
    cands = _candidates(beir60, tmp_path / "c.run")
    first = score_candidates(BM25Teacher(), c, cands, tmp_path / "s")
    assert first["scored"] == 60 and first["skipped"] == 0
    assert first["pairs"] == sum(len(v) for v in cands.values())
    again = score_candidates(BM25Teacher(), c, cands, tmp_path / "s")
    assert again["scored"] == 0 and again["skipped"] == 60 and again["pairs"] == first["pairs"]
    with ScoreStore(tmp_path / "s") as store:
        fp = BM25Teacher().fingerprint
        assert store.resolve("bm25") == fp
        assert set(store.get(fp, qids=["q1", "q2"])) == {"q1", "q2"}
    with pytest.raises(ValueError, match="is a folder"):
        ScoreStore(tmp_path / "s" / "scores.sqlite")


SLOW_TEACH = """
import sys, time
from retrieval_kd.teachers.bm25 import BM25Teacher
_score = BM25Teacher.score
def slow(self, *args):
    time.sleep(0.05)
    return _score(self, *args)
BM25Teacher.score = slow
from retrieval_kd.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_mid_run_then_rerun_equals_uninterrupted(beir60, tmp_path):
    _candidates(beir60, tmp_path / "c.run")
    args = ["-q", "teach", "--dataset", str(beir60), "--split", "test", "--candidates", str(tmp_path / "c.run"),
            "--teacher", "bm25", "--batch-queries", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TEACH, *args, "--store", str(killed)], env=env)
    deadline = time.time() + 120
    n = 0
    while time.time() < deadline:
        if (killed / "scores.sqlite").exists():
            try:
                n = len(_rows(killed))
            except Exception:  # noqa: BLE001 - the schema may not exist yet
                n = 0
            if n >= 100:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    total = 60 * 10  # at most; the exact count comes from the uninterrupted run
    assert 0 < n < total, "the kill must land mid-run"
    subprocess.run([sys.executable, "-m", "retrieval_kd.cli.main", *args, "--store", str(killed)], env=env, check=True)
    whole = tmp_path / "whole"
    subprocess.run([sys.executable, "-m", "retrieval_kd.cli.main", *args, "--store", str(whole)], env=env, check=True)
    assert _rows(killed) == _rows(whole)  # every pair once, same scores


def test_torchrun_two_ranks_equal_single_process(beir60, tmp_path):
    _candidates(beir60, tmp_path / "c.run")
    args = ["-q", "teach", "--dataset", str(beir60), "--split", "test", "--candidates", str(tmp_path / "c.run"),
            "--teacher", "bm25", "--teacher", "bm25,k1=1.2,b=0.75", "--ensemble", "minmax"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "retrieval_kd.cli.main", *args, "--store", str(tmp_path / "dist")], env=env, check=True,
                   timeout=300)
    subprocess.run([sys.executable, "-m", "retrieval_kd.cli.main", *args, "--store", str(tmp_path / "single")],
                   env=env, check=True, timeout=300)
    assert not list((tmp_path / "dist").glob("scores.rank*.sqlite")), "shards are merged and removed"
    dist, single = _rows(tmp_path / "dist"), _rows(tmp_path / "single")
    assert len(dist) == len(single) > 0
    assert dist == single


RUN = {"q1": {"p1": 9.0, "n1": 4.0, "n2": 7.0}, "q2": {"n3": 1.0}}
QRELS = {"q1": {"p1": 1}, "q2": {"p9": 1}}


def test_tsv_export_hand_checked(tmp_path):
    n = export_tsv(RUN, QRELS, tmp_path / "m.tsv")
    assert n == 2  # q2 has no scored positive
    assert (tmp_path / "m.tsv").read_text().splitlines() == [
        "9.000000\t7.000000\tq1\tp1\tn2",  # hardest negative first
        "9.000000\t4.000000\tq1\tp1\tn1",
    ]


def test_jsonl_export(tmp_path):
    export_jsonl(RUN, QRELS, tmp_path / "t.jsonl", n_negatives=1)
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert rows == [{"qid": "q1", "doc_ids": ["p1", "n2"], "scores": [9.0, 7.0]}]


def test_hf_export_has_texts_and_margins(tiny_beir, tmp_path):
    c = load_collection(str(tiny_beir))
    run = {"q1": {"d1": 3.0, "d3": 1.0, "d2": 2.5}}
    ds = to_hf_dataset(run, c.qrels("test"), c, path=tmp_path / "hf")
    assert ds.column_names[:2] == ["query_id", "query"]
    assert ds.num_rows == 2  # d4 (judged) unscored; negatives d2, d3
    assert ds[0]["negative_id"] == "d2" and ds[0]["label"] == pytest.approx(0.5)
    assert ds[0]["positive"] == "Goldfish Goldfish grow larger in big ponds."
    import datasets

    assert datasets.load_from_disk(str(tmp_path / "hf")).num_rows == 2


def test_cli_mine_teach_export(beir60, tiny_beir, tmp_path, capsys):
    from retrieval_kd.cli.main import main

    cands, store = tmp_path / "c.run", tmp_path / "store"
    assert main(["-q", "teach", "mine", "--dataset", str(tiny_beir), "--split", "test", "--top-k", "3",
                 "--output", str(cands)]) == 0
    from retrieval_kd.data import read_run

    run = read_run(cands)
    assert "d4" in run["q1"]  # a judged positive is added even if BM25 missed it
    assert main(["-q", "teach", "mine", "--dataset", str(beir60), "--split", "test", "--top-k", "5",
                 "--output", str(cands)]) == 0
    assert main(["-q", "teach", "--dataset", str(beir60), "--split", "test", "--candidates", str(cands),
                 "--teacher", "bm25", "--store", str(store)]) == 0
    assert main(["-q", "teach", "export", "--store", str(store), "--teacher", "bm25", "--dataset", str(beir60),
                 "--split", "test", "--format", "tsv", "--out", str(tmp_path / "m.tsv")]) == 0
    lines = (tmp_path / "m.tsv").read_text().splitlines()
    assert lines and all(len(line.split("\t")) == 5 for line in lines)
    assert main(["-q", "teach", "list", "--store", str(store)]) == 0
    assert "bm25" in capsys.readouterr().out


def test_import_teacher_copies_one_fingerprint_and_resolve_ensemble(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with ScoreStore(a) as s:
        s.register("splade-x", "splade:m", {})
        s.register("ensemble-1", "ensemble(x)", {})
        s.put_query("splade-x", "q1", {"d1": 1.5, "d2": 0.5})
        s.put_query("ensemble-1", "q1", {"d1": 1.0})
    with ScoreStore(b) as s:
        assert s.import_teacher(a, "splade-x") == 2
        assert s.import_teacher(a, "splade-x") == 0                      # idempotent
        assert s.get("splade-x") == {"q1": {"d1": 1.5, "d2": 0.5}} and s.done_queries("splade-x") == {"q1"}
        assert "ensemble-1" not in s.teachers()
        with pytest.raises(KeyError, match="no single teacher 'ensemble'"):
            s.resolve("ensemble")
    with ScoreStore(a) as s:
        assert s.resolve("ensemble") == "ensemble-1" and s.resolve("splade:m") == "splade-x"


# -- what a stored score depends on: candidates, query text, corpus; never stale ----------------------------------
class CountingTeacher:
    """A pointwise (or listwise) teacher whose score is a hand-checkable function of the texts; counts pairs."""

    def __new__(cls, listwise: bool = False, nan_for: str | None = None):  # nan_for: a query text
        import numpy as np

        from retrieval_kd.teachers.base import Teacher

        class _Counting(Teacher):
            kind = "counting"

            def __init__(self):
                self.listwise = listwise
                self.pairs = []

            def config(self):
                return {"listwise": listwise}

            def score(self, query, doc_ids, doc_texts):
                self.pairs += [(query, d) for d in doc_ids]
                # listwise: a score that depends on the rank in the given list, as FIRST's does
                out = [len(set(query.split()) & set(t.split())) + (0.01 * r if listwise else 0.0)
                       for r, t in enumerate(doc_texts)]
                if query == nan_for:
                    out[-1] = float("nan")
                return np.asarray(out, dtype=np.float32)

        return _Counting()


def _fresh(teacher_factory, collection, cands, store, **kw):
    score_candidates(teacher_factory(), collection, cands, store, **kw)
    with ScoreStore(store) as s:
        return s.get(teacher_factory().fingerprint)


def test_changed_candidates_score_only_new_pairs_and_drop_old_ones(beir60, tmp_path):
    c = load_collection(str(beir60))
    from retrieval_kd.teachers import mine_candidates

    top10 = mine_candidates(c, "test", k=10, with_positives=False)
    top5 = {q: dict(sorted(d.items(), key=lambda kv: -kv[1])[:5]) for q, d in top10.items()}
    teacher = CountingTeacher()
    score_candidates(teacher, c, top5, tmp_path / "s")
    first = len(teacher.pairs)
    assert first == sum(len(v) for v in top5.values())
    again = score_candidates(teacher, c, top10, tmp_path / "s")          # top_k 5 -> 10: only the new pairs
    assert len(teacher.pairs) - first == sum(len(top10[q]) - len(top5[q]) for q in top10)
    assert again["skipped"] == sum(top10[q].keys() == top5[q].keys() for q in top10)
    with ScoreStore(tmp_path / "s") as s:
        assert s.get(teacher.fingerprint) == _fresh(CountingTeacher, c, top10, tmp_path / "f10")
    score_candidates(teacher, c, top5, tmp_path / "s")                   # and back: no pair outside top-5 kept
    with ScoreStore(tmp_path / "s") as s:
        stored = s.get(teacher.fingerprint)
    assert {q: set(d) for q, d in stored.items()} == {q: set(d) for q, d in top5.items()}


def test_changed_query_text_or_corpus_is_rescored(beir60, tmp_path):
    c = load_collection(str(beir60))
    cands = _candidates(beir60, tmp_path / "c.run")
    score_candidates(CountingTeacher(), c, cands, tmp_path / "s")
    queries = dict(c.all_queries)
    queries["q3"] = "golf hotel india"                                    # one query's text changed
    teacher = CountingTeacher()
    summary = score_candidates(teacher, c, cands, tmp_path / "s", queries=queries)
    assert summary["scored"] == 1 and summary["rescored"] == 1
    assert {q for q, _ in teacher.pairs} == {"golf hotel india"}
    with ScoreStore(tmp_path / "s") as s:
        assert s.get(teacher.fingerprint) == _fresh(CountingTeacher, c, cands, tmp_path / "fq", queries=queries)
    # the same ids in another corpus (other texts): every query is rescored, none kept from the first corpus
    other = tmp_path / "other"
    other.mkdir()
    lines = (beir60 / "corpus.jsonl").read_text().replace("alpha", "zulu").replace("bravo", "alpha")
    (other / "corpus.jsonl").write_text(lines)
    for name in ("queries.jsonl", "qrels"):
        src = beir60 / name
        (other / name).symlink_to(src, target_is_directory=src.is_dir())
    c2 = load_collection(str(other))
    summary = score_candidates(CountingTeacher(), c2, cands, tmp_path / "s", queries=queries)
    assert summary["skipped"] == 0 and summary["rescored"] == 60
    with ScoreStore(tmp_path / "s") as s:
        assert s.get(teacher.fingerprint) == _fresh(CountingTeacher, c2, cands, tmp_path / "fc", queries=queries)


def test_listwise_teacher_rescores_a_reordered_list_whole(beir60, tmp_path):
    c = load_collection(str(beir60))
    cands = _candidates(beir60, tmp_path / "c.run")
    score_candidates(CountingTeacher(listwise=True), c, cands, tmp_path / "s")
    reordered = dict(cands)
    q = sorted(cands)[0]
    reordered[q] = {d: -v for d, v in cands[q].items()}                   # same set, reversed order
    teacher = CountingTeacher(listwise=True)
    summary = score_candidates(teacher, c, reordered, tmp_path / "s")
    assert summary["scored"] == 1 and len(teacher.pairs) == len(cands[q])
    with ScoreStore(tmp_path / "s") as s:
        assert s.get(teacher.fingerprint)[q] == _fresh(lambda: CountingTeacher(listwise=True), c, reordered,
                                                       tmp_path / "f")[q]


def test_ensemble_follows_its_members_candidates(beir60, tmp_path):
    from retrieval_kd.teachers import EnsembleTeacher, mine_candidates

    c = load_collection(str(beir60))
    top10 = mine_candidates(c, "test", k=10, with_positives=False)
    top5 = {q: dict(sorted(d.items(), key=lambda kv: -kv[1])[:5]) for q, d in top10.items()}

    def ensemble():
        return EnsembleTeacher([BM25Teacher(), CountingTeacher()])

    score_candidates(ensemble(), c, top10, tmp_path / "s")
    score_candidates(ensemble(), c, top5, tmp_path / "s")
    with ScoreStore(tmp_path / "s") as s:
        assert s.get(ensemble().fingerprint) == _fresh(ensemble, c, top5, tmp_path / "f")


def test_nan_scores_are_an_error_naming_query_and_doc(beir60, tmp_path):
    c = load_collection(str(beir60))
    cands = _candidates(beir60, tmp_path / "c.run")
    q = sorted(cands)[3]
    last = sorted(cands[q].items(), key=lambda kv: (-kv[1], kv[0]))[-1][0]  # the teacher sees them best first
    with pytest.raises(ValueError, match=rf"non-finite score nan for query '{q}', doc '{last}'"):
        queries = {**c.all_queries, q: "a text no other query has"}
        score_candidates(CountingTeacher(nan_for=queries[q]), c, cands, tmp_path / "s", queries=queries,
                         batch_queries=1)
    with ScoreStore(tmp_path / "s") as s:
        fp = CountingTeacher().fingerprint
        assert q not in s.done_queries(fp) and q not in s.get(fp)           # not marked done, nothing dropped
    with ScoreStore(tmp_path / "t") as s, pytest.raises(ValueError, match="not a finite number"):
        s.put_query("x", "q1", {"d1": float("inf")})


def test_version1_marks_and_corrupt_stores(beir60, tmp_path):
    from retrieval_kd.errors import IntegrityError

    c = load_collection(str(beir60))
    cands = _candidates(beir60, tmp_path / "c.run")
    score_candidates(BM25Teacher(), c, cands, tmp_path / "s")
    with ScoreStore(tmp_path / "s") as s:  # what a store of the previous version holds: marks without keys
        s._conn.execute("UPDATE done SET context = NULL, candidates = NULL")
    assert score_candidates(BM25Teacher(), c, cands, tmp_path / "s")["rescored"] == 60
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "scores.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(IntegrityError, match=r"scores.sqlite: not a readable score store"):
        ScoreStore(tmp_path / "bad")
