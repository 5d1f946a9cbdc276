"""Errors a user can cause: one line ``rkd COMMAND: error: ...`` naming the file, flag or id, exit code 2; a bug of
the project keeps its traceback and exits with 3. Everything runs in-process (no model is loaded)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from retrieval_kd.cli.main import main
from retrieval_kd.errors import ConfigError, UnavailableError


def _rkd(capsys, *argv) -> tuple[int, str]:
    """Exit code and stderr of ``rkd ARGV`` (argparse's own errors exit through SystemExit)."""
    capsys.readouterr()
    try:
        rc = main(["-q", *map(str, argv)])
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


def _one_line_error(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(f"rkd {command}") and ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def embeddings(tmp_path):
    """20 random 16-d vectors as --embeddings/--doc-ids files."""
    x = np.random.default_rng(0).standard_normal((20, 16)).astype(np.float32)
    np.save(tmp_path / "emb.npy", x)
    (tmp_path / "ids.json").write_text(json.dumps([f"d{i}" for i in range(20)]))
    return ["--embeddings", tmp_path / "emb.npy", "--doc-ids", tmp_path / "ids.json"]


# -- A: OS errors and undecodable files name the path; a bug exits 3 with its traceback ----------------------------
def test_os_errors_name_the_path(capsys, tiny_beir, tmp_path):
    run = tmp_path / "bm25.run"
    run.write_text("q1 Q0 d1 1 1.0 x\n")
    rc, err = _rkd(capsys, "eval", "--dataset", tiny_beir, "--split", "test", "--run", tmp_path)  # a folder
    assert rc == 2 and f"{tmp_path}: is a folder" in _one_line_error(err, "eval")
    rc, err = _rkd(capsys, "eval", "--dataset", tiny_beir, "--split", "test", "--run", run / "x.run")
    assert rc == 2 and "a part of this path is a file" in _one_line_error(err, "eval")
    rc, err = _rkd(capsys, "search", "bm25", "--dataset", tiny_beir, "--split", "test", "--output", tmp_path)
    assert rc == 2 and "--output" in err and "is a folder" in err  # refused before the search


def test_permission_and_decode_errors_are_user_errors(capsys, tmp_path, monkeypatch):
    from retrieval_kd.cli import data_cmd

    def denied(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked.json"))

    monkeypatch.setattr(data_cmd, "_list", denied)
    rc, err = _rkd(capsys, "data", "list")
    assert rc == 2 and f"{tmp_path / 'locked.json'}: permission denied" in _one_line_error(err, "data")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfename: x\n")
    rc, err = _rkd(capsys, "pipeline", bad, "--dry-run")
    assert rc == 2 and f"{bad}: not UTF-8 text" in _one_line_error(err, "pipeline")
    bad.write_text("name: [x\n")
    rc, err = _rkd(capsys, "pipeline", bad, "--dry-run")
    assert rc == 2 and f"{bad}:2:1: not valid YAML" in _one_line_error(err, "pipeline")


def test_a_bug_keeps_its_traceback_and_exits_3(capsys, monkeypatch):
    from retrieval_kd.cli import data_cmd

    def broken(args):
        raise RuntimeError("an invariant of retrieval-kd broke")

    monkeypatch.setattr(data_cmd, "_list", broken)
    rc, err = _rkd(capsys, "data", "list")
    assert rc == 3 and "Traceback" in err and "RuntimeError: an invariant" in err and "bug of retrieval-kd" in err
    monkeypatch.setattr(data_cmd, "_list", lambda args: {}["no-such-dataset"])  # a user error, with -vv
    capsys.readouterr()
    assert main(["-vv", "data", "list"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "rkd data: error: no-such-dataset" in err


def test_bad_set_override_is_one_line(capsys, tmp_path):
    rc, err = _rkd(capsys, "pipeline", tmp_path / "p.yaml", "--set", "index.nlist=[1", "--dry-run")
    assert rc == 2 and "--set 'index.nlist=[1'" in _one_line_error(err, "pipeline")


# -- B: FAISS parameters are checked before FAISS sees them ---------------------------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--type", "ivfpq", "--nlist", "0"], "argument --nlist: expected an integer >= 1"),
    (["--type", "pq", "--m", "-4"], "argument --m: expected an integer >= 1"),
    (["--type", "ivfpq", "--nlist", "abc"], "argument --nlist"),
])
def test_index_flags_are_checked_by_argparse(capsys, tmp_path, embeddings, flags, message):
    rc, err = _rkd(capsys, "index", "build", *flags, *embeddings, "--output", tmp_path / "ix")
    assert rc == 2 and message in err and not (tmp_path / "ix").exists()


@pytest.mark.parametrize("flags, message", [
    (["--type", "ivfpq", "--nlist", "50", "--m", "8"], "nlist=50 is more than the 20 vectors"),
    (["--type", "opq-ivfpq", "--nlist", "2", "--m", "7"], "m=7 does not divide the dimension 16"),
    (["--type", "pq", "--m", "8"], "needs at least 256 training vectors"),
])
def test_index_sizes_are_checked_against_the_vectors(capsys, tmp_path, embeddings, flags, message):
    rc, err = _rkd(capsys, "index", "build", *flags, *embeddings, "--output", tmp_path / "ix")
    assert rc == 2 and message in _one_line_error(err, "index") and not (tmp_path / "ix").exists()


def test_build_faiss_index_protects_library_users():
    from retrieval_kd.index.dense import build_faiss_index

    x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    for kwargs, message in [({"nlist": 0}, "nlist=0"), ({"nlist": 301}, "nlist=301"), ({"m": 0}, "m=0"),
                            ({"m": 5}, "m=5 does not divide"), ({"nbits": 0}, "nbits=0"), ({"nbits": 17}, "nbits=17"),
                            ({"nlist": 2.5}, "nlist=2.5")]:
        with pytest.raises(ConfigError, match=message):
            build_faiss_index("ivfpq", x, **{"m": 8, **kwargs})
    with pytest.raises(ConfigError, match="no vectors"):
        build_faiss_index("flat", x[:0])
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_faiss_index("flat", x)
    assert build_faiss_index("pq", x[4:], m=8, nbits=4).ntotal == 296  # small codes are fine


# -- C: BM25 parameters and teacher specs ---------------------------------------------------------------------------
def test_bm25_params_are_validated():
    from retrieval_kd.search import BM25Params

    for kwargs, message in [({"k1": "abc"}, "k1='abc'"), ({"k1": -1}, "k1=-1"), ({"b": 1.5}, "b=1.5"),
                            ({"k1": float("nan")}, "k1=nan"), ({"k1": True}, "k1=True"), ({"method": "bm99"}, "bm99")]:
        with pytest.raises(ConfigError, match=message):
            BM25Params(**kwargs)
    assert BM25Params(k1=1, b=0).k1 == 1.0


@pytest.mark.parametrize("spec, message", [
    ("bm25,k1=abc", "teacher spec 'bm25,k1=abc': option k1='abc' must be a number"),
    ("bm25,b=2", "teacher spec 'bm25,b=2': BM25 b=2: must be a number in [0, 1]"),
    ("bm25,kk=1", "teacher spec 'bm25,kk=1': bm25 has no option 'kk' (its options: k1, b)"),
    ("bi-encoder:m,max_seq_length=0", "option max_seq_length='0' must be an integer >= 1"),
    ("bi-encoder:m,normalize=maybe", "option normalize='maybe' must be true/false"),
    ("llm-first:m,stride=30", "stride=30 must be in 1..window (20)"),
    ("bm25:some/model", "bm25 takes no model"),
])
def test_teacher_specs_fail_as_one_line(capsys, tmp_path, tiny_beir, spec, message):
    run = tmp_path / "cands.run"
    run.write_text("q1 Q0 d1 1 1.0 x\n")
    rc, err = _rkd(capsys, "teach", "--dataset", tiny_beir, "--split", "test", "--candidates", run, "--teacher", spec,
                   "--store", tmp_path / "store")
    assert rc == 2 and message in _one_line_error(err, "teach") and not (tmp_path / "store").exists()


def test_search_flags_are_checked(capsys, tiny_beir, tmp_path):
    for flag, value in [("--k1", "-1"), ("--b", "1.5"), ("--top-k", "0"), ("--k1", "abc")]:
        rc, err = _rkd(capsys, "search", "bm25", "--dataset", tiny_beir, "--split", "test", flag, value,
                       "--output", tmp_path / "x.run")
        assert rc == 2 and f"argument {flag}" in err


# -- D: a model id not in the local cache while offline -------------------------------------------------------------
@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub


def test_unknown_model_offline_names_it_and_leaves_no_folder(capsys, tiny_beir, tmp_path, empty_hub):
    leftover = empty_hub / "models--nobody--no-such-model"
    (leftover / "refs").mkdir(parents=True)             # what a failed lookup may leave: folders, no file
    (leftover / ".no_exist" / "abc").mkdir(parents=True)
    (leftover / ".no_exist" / "abc" / "config.json").write_bytes(b"")
    rc, err = _rkd(capsys, "search", "dense", "--model", "nobody/no-such-model", "--dataset", tiny_beir,
                   "--split", "test", "--output", tmp_path / "x.run")
    line = _one_line_error(err, "search")
    assert rc == 2 and "'nobody/no-such-model'" in line and "not in the local Hugging Face cache" in line
    assert "HF_HUB_OFFLINE" in line and "make models" in line
    assert not leftover.exists() and not (tmp_path / "x.run").exists()
    rc, err = _rkd(capsys, "index", "build", "--type", "flat", "--model", "nobody/no-such-model", "--dataset",
                   tiny_beir, "--output", tmp_path / "ix")
    assert rc == 2 and "'nobody/no-such-model'" in _one_line_error(err, "index")
    from retrieval_kd.paths import cache_dir

    # no empty .parts folder of corpus embeddings is left for the model that could not load
    assert not list(cache_dir().glob("embeddings/*no-such-model*"))


def test_resolve_model_never_deletes_real_content(empty_hub, tmp_path):
    from retrieval_kd.models import resolve_model

    partial = empty_hub / "models--org--partial"
    (partial / "blobs").mkdir(parents=True)
    (partial / "blobs" / "0123abcd.incomplete").write_bytes(b"half a download")
    with pytest.raises(UnavailableError, match="'org/partial'"):
        resolve_model("org/partial")
    assert (partial / "blobs" / "0123abcd.incomplete").exists()
    with pytest.raises(UnavailableError, match="rkd models pull-offline"):  # a model of the offline pack
        resolve_model("rkd-local/splade-tiny")
    with pytest.raises(UnavailableError, match="no such folder"):
        resolve_model("experiments/x/model")
    (tmp_path / "folder").mkdir()
    assert resolve_model(str(tmp_path / "folder")) == str(tmp_path / "folder")


def test_an_unreachable_hub_takes_the_process_offline_once(empty_hub, monkeypatch, caplog):
    from huggingface_hub import constants

    from retrieval_kd.models import resolve

    snap = empty_hub / "models--org--cached" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (empty_hub / "models--org--cached" / "refs").mkdir()
    (empty_hub / "models--org--cached" / "refs" / "main").write_text("abc")
    checks = []
    monkeypatch.setattr(resolve, "_hub_unreachable", lambda: checks.append(1) or "ConnectError: no DNS")
    monkeypatch.setattr(resolve, "_hub_checked", False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with caplog.at_level("WARNING", logger="retrieval_kd.models.resolve"):
        assert resolve.resolve_model("org/cached") == "org/cached"
        assert resolve.resolve_model("org/cached") == "org/cached"
    assert checks == [1] and os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE is True
    assert [r.message for r in caplog.records if "not reachable" in r.message] and len(caplog.records) == 1
    with pytest.raises(UnavailableError, match="'org/absent'"):  # offline now: a model not cached is refused
        resolve.resolve_model("org/absent")
    # a value the user set is theirs: no check, and 0 stays online (the model downloads on load)
    monkeypatch.setattr(resolve, "_hub_checked", False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve.resolve_model("org/absent") == "org/absent" and checks == [1]
    # a hub that answers: online, nothing set
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(resolve, "_hub_unreachable", lambda: checks.append(2))
    assert resolve.resolve_model("org/absent") == "org/absent" and checks == [1, 2]
    assert "HF_HUB_OFFLINE" not in os.environ and constants.HF_HUB_OFFLINE is False


def test_the_hub_check_reports_a_refused_connection(monkeypatch):
    from huggingface_hub import constants

    from retrieval_kd.models import resolve

    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)  # straight to the port, not through a proxy that would answer
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens here
    assert "Error" in resolve._hub_unreachable()


def test_embedding_dimension_is_read_from_the_files(tmp_path):
    from retrieval_kd.models import embedding_dimension

    st = tmp_path / "st"
    (st / "1_Pooling").mkdir(parents=True)
    (st / "config.json").write_text(json.dumps({"hidden_size": 384}))
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 384,
                                                              "pooling_mode_mean_tokens": True}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (st / "modules.json").write_text(json.dumps(modules))
    assert embedding_dimension(st) == 384
    (st / "2_Dense").mkdir()
    (st / "2_Dense" / "config.json").write_text(json.dumps({"in_features": 384, "out_features": 128}))
    (st / "modules.json").write_text(json.dumps([*modules, {"idx": 2, "name": "2", "path": "2_Dense",
                                                            "type": "sentence_transformers.models.Dense"}]))
    assert embedding_dimension(st) == 128
    (st / "modules.json").unlink()
    assert embedding_dimension(st) == 384  # a plain transformers folder: hidden_size
    assert embedding_dimension(tmp_path / "absent") is None


# -- F: metric names and cutoffs ------------------------------------------------------------------------------------
def test_bad_metric_cutoff_is_one_line(capsys, tiny_beir, tmp_path):
    run = tmp_path / "r.run"
    run.write_text("q1 Q0 d1 1 1.0 x\n")
    rc, err = _rkd(capsys, "eval", "--dataset", tiny_beir, "--split", "test", "--run", run, "--metrics", "ndcg@-5")
    assert rc == 2 and "'ndcg@-5'" in _one_line_error(err, "eval")
