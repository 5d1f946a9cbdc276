"""Output folders: only what retrieval-kd wrote is replaced, whole; crashes leave the old or the new one; locks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from retrieval_kd.errors import FolderExistsError, LockedError
from retrieval_kd.utils.fs import MARKER, atomic_folder, check_output_folder, folder_kind, recover_folder


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _flat(n: int = 20, d: int = 8, seed: int = 0):
    from retrieval_kd.index.dense import build_faiss_index

    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return build_faiss_index("flat", x), [f"d{i}" for i in range(n)]


def test_a_folder_retrieval_kd_did_not_write_is_never_replaced(tmp_path):
    from retrieval_kd.index.dense import save_index

    user = tmp_path / "my-thesis"
    user.mkdir()
    (user / "chapter1.tex").write_text("precious")
    index, ids = _flat()
    with pytest.raises(FolderExistsError, match="was not written by retrieval-kd"):
        save_index(index, user, ids, {"type": "flat"})
    assert (user / "chapter1.tex").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-thesis"]  # no temp folder left
    save_index(index, user, ids, {"type": "flat"}, overwrite=True)  # explicit: replaced
    assert not (user / "chapter1.tex").exists() and folder_kind(user) == "dense-index"


def test_a_student_folder_is_not_an_index(tmp_path):
    from retrieval_kd.index.sparse import SparseIndex

    student = tmp_path / "student"
    student.mkdir()
    (student / MARKER).write_text(json.dumps({"kind": "dense-student"}))
    (student / "model.safetensors").write_bytes(b"weights")
    index = SparseIndex.build(__import__("scipy.sparse", fromlist=["x"]).csr_matrix(np.eye(3, dtype=np.float32)),
                              ["a", "b", "c"])
    with pytest.raises(FolderExistsError, match="holds a dense student"):
        index.save(student)
    assert (student / "model.safetensors").read_bytes() == b"weights"


def test_own_folder_is_replaced_whole_and_a_failed_write_keeps_the_old(tmp_path):
    from retrieval_kd.index.dense import load_index, save_index

    dest = tmp_path / "idx"
    index, ids = _flat(seed=0)
    save_index(index, dest, ids, {"type": "flat"})
    before = (dest / "index.faiss").read_bytes()

    def crash(_tmp):
        raise RuntimeError("disk full")

    other, _ = _flat(seed=1)
    with pytest.raises(RuntimeError, match="disk full"):
        save_index(other, dest, ids, {"type": "flat"}, extra=crash)
    assert (dest / "index.faiss").read_bytes() == before  # the old one, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    save_index(other, dest, ids, {"type": "flat"})  # same kind: replaced without --overwrite
    assert (dest / "index.faiss").read_bytes() != before
    assert load_index(dest)[1] == ids


def test_crash_between_the_two_renames_is_recovered(tmp_path):
    dest = tmp_path / "idx"
    old = tmp_path / f".idx.{_dead_pid()}.abcd1234.old"  # what a kill between 'old away' and 'new in' leaves
    old.mkdir()
    (old / MARKER).write_text(json.dumps({"kind": "dense-index"}))
    (old / "index.faiss").write_bytes(b"old")
    assert recover_folder(dest)
    assert (dest / "index.faiss").read_bytes() == b"old" and not old.exists()


def test_killed_writers_leftovers_are_swept(tmp_path):
    from retrieval_kd.data.formats import atomic_write

    pid = _dead_pid()
    stale_file = tmp_path / f".run.trec.{pid}.0a1b.tmp"
    stale_file.write_text("torn")
    stale_dir = tmp_path / f".idx.{pid}.0a1b.tmp"
    stale_dir.mkdir()
    user_file = tmp_path / ".run.trec.notes.tmp"  # not our pattern: kept
    user_file.write_text("mine")
    with atomic_write(tmp_path / "run.trec") as fh:
        fh.write("q1 Q0 d1 1 1.0 x\n")
    with atomic_folder(tmp_path / "idx", "dense-index") as tmp:
        (tmp / "x").write_text("1")
    assert not stale_file.exists() and not stale_dir.exists() and user_file.exists()


def test_a_second_writer_of_the_same_folder_is_refused(tmp_path):
    dest = tmp_path / "idx"
    with atomic_folder(dest, "dense-index") as tmp:
        (tmp / "a").write_text("1")
        with pytest.raises(LockedError, match="being written by pid"):
            with atomic_folder(dest, "dense-index"):
                pass
    assert (dest / "a").read_text() == "1"


def test_empty_folder_and_files(tmp_path):
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty", "bm25-index")  # nothing to lose
    (tmp_path / "file").write_text("x")
    with pytest.raises(FolderExistsError, match="is not a folder"):
        check_output_folder(tmp_path / "file", "bm25-index")


def test_cli_refuses_user_folders_before_any_work(tiny_beir, tmp_path, capsys):
    from retrieval_kd.cli.main import main

    user = tmp_path / "results"
    user.mkdir()
    (user / "table.csv").write_text("a,b\n")
    rc = main(["-q", "search", "bm25", "--dataset", str(tiny_beir), "--split", "test", "--index", str(user),
               "--output", str(tmp_path / "run.trec")])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{user}: exists and was not written by retrieval-kd" in err and "--overwrite" in err
    assert (user / "table.csv").read_text() == "a,b\n"
    emb = tmp_path / "e.npy"
    np.save(emb, np.eye(4, dtype=np.float32))
    (tmp_path / "ids.json").write_text(json.dumps(["d1", "d2", "d3", "d4"]))
    rc = main(["-q", "index", "build", "--type", "flat", "--embeddings", str(emb), "--doc-ids",
               str(tmp_path / "ids.json"), "--output", str(user)])
    assert rc == 2 and (user / "table.csv").exists()
    assert main(["-q", "index", "build", "--type", "flat", "--embeddings", str(emb), "--doc-ids",
                 str(tmp_path / "ids.json"), "--output", str(user), "--overwrite"]) == 0
    assert folder_kind(user) == "dense-index"
