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
