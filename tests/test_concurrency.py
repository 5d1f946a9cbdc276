"""Two runs at once: sharing a BM25 index folder, a score store or an output folder corrupts nothing."""

from __future__ import annotations

import threading

import pytest

from retrieval_kd.data import load_collection
from retrieval_kd.errors import LockedError
from retrieval_kd.teachers import BM25Teacher, ScoreStore, score_candidates

from .test_store import _candidates, _rows, beir60  # noqa: F401 - the fixture


def _together(*fns):
    """Run the functions in threads started at the same moment (flock and SQLite treat threads' handles like
    other processes'); returns their results or raises the first error."""
    results, errors = [None] * len(fns), []
    start = threading.Barrier(len(fns))

    def call(i, fn):
        start.wait()
        try:
            results[i] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return results


def test_two_searches_share_one_bm25_build(beir60, tmp_path, monkeypatch):  # noqa: F811
    import time

    from retrieval_kd.search import bm25 as bm25_module

    builds = []
    real_build = bm25_module.BM25Index.build.__func__

    def slow_build(cls, *args, **kwargs):
        builds.append(1)
        time.sleep(0.5)  # long enough for the other caller to arrive while it builds
        return real_build(cls, *args, **kwargs)

    monkeypatch.setattr(bm25_module.BM25Index, "build", classmethod(slow_build))
    collection = load_collection(str(beir60))
    folder = tmp_path / "bm25"
    a, b = _together(lambda: bm25_module.bm25_index_for(collection, folder),
                     lambda: bm25_module.bm25_index_for(collection, folder))
    assert len(builds) == 1  # the second waited for the first, then reused its index
    queries = collection.queries("test")
    assert a.search(queries, top_k=5) == b.search(queries, top_k=5)


def test_two_teach_runs_on_one_store_equal_one_run(beir60, tmp_path):  # noqa: F811
    c = load_collection(str(beir60))
    cands = _candidates(beir60, tmp_path / "c.run")
    _together(lambda: score_candidates(BM25Teacher(), c, cands, tmp_path / "shared", batch_queries=2),
              lambda: score_candidates(BM25Teacher(), c, cands, tmp_path / "shared", batch_queries=2))
    score_candidates(BM25Teacher(), c, cands, tmp_path / "alone")
    assert _rows(tmp_path / "shared") == _rows(tmp_path / "alone")
    with ScoreStore(tmp_path / "shared") as store:
        assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_two_writers_of_one_index_folder_one_is_refused(tmp_path):
    import numpy as np

    from retrieval_kd.index.dense import build_faiss_index, load_index, save_index

    index = build_faiss_index("flat", np.eye(8, dtype=np.float32))
    ids = [f"d{i}" for i in range(8)]
    gate = threading.Event()

    def slow_extra(_tmp):
        gate.wait(10)

    def first():
        return save_index(index, tmp_path / "idx", ids, {"type": "flat"}, extra=slow_extra)

    def second():
        import time

        time.sleep(0.3)  # the first holds the folder by now
        try:
            save_index(index, tmp_path / "idx", ids, {"type": "flat"})
        finally:
            gate.set()

    with pytest.raises(LockedError, match="is being written by pid"):
        _together(first, second)
    assert load_index(tmp_path / "idx")[1] == ids  # the first one's folder, whole
