"""Cases a hostile probe found silently wrong or crashing, each now one clear error (exit 2) and nothing left over."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval_kd.cli.main import main


def _rkd(capsys, *args) -> tuple[int, str]:
    rc = main(["-q", *map(str, args)])
    return rc, capsys.readouterr().err


@pytest.fixture
def emb(tmp_path):
    np.save(tmp_path / "e.npy", np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32))
    return tmp_path / "e.npy"


@pytest.mark.parametrize("ids, message", [
    (["d1", "d2", "d3", "d4", None], "entry 4 (None) is not a doc id"),
    (["d1", "d2", "d3", "d4", "d4"], "doc id 'd4' appears more than once"),
    (["d1", "d2", "d3", "d4", "x y"], "entry 4 ('x y') is not a doc id"),
    (["d1", "d2", "d3", "d4", "zz"], "1 of 5 doc ids are not in"),
])
def test_bad_doc_ids_are_refused_at_build_time(ids, message, emb, tiny_beir, tmp_path, capsys):
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    rc, err = _rkd(capsys, "index", "build", "--type", "flat", "--embeddings", emb, "--doc-ids", tmp_path / "ids.json",
                   "--dataset", tiny_beir, "--output", tmp_path / "idx")
    assert rc == 2 and message in err and not (tmp_path / "idx").exists()


def test_embeddings_index_with_dataset_records_its_corpus(emb, tiny_beir, tmp_path, capsys):
    from retrieval_kd.index.dense import load_index

    (tmp_path / "ids.json").write_text(json.dumps(["d1", "d2", "d3", "d4", "d5"]))
    assert _rkd(capsys, "index", "build", "--type", "flat", "--embeddings", emb, "--doc-ids", tmp_path / "ids.json",
                "--dataset", tiny_beir, "--output", tmp_path / "idx")[0] == 0
    assert load_index(tmp_path / "idx")[2]["corpus_key"]  # so a corpus with the same ids and other texts is refused


def test_nan_query_embeddings_are_refused_before_training(tmp_path, capsys):
    emb = tmp_path / "docs.npy"
    np.save(emb, np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32))
    q = np.ones((4, 8), dtype=np.float32)
    q[2, 3] = np.nan
    np.save(tmp_path / "q.npy", q)
    (tmp_path / "ids.json").write_text(json.dumps([f"d{i}" for i in range(300)]))
    rc, err = _rkd(capsys, "vq", "train", "--embeddings", emb, "--doc-ids", tmp_path / "ids.json", "--queries",
                   tmp_path / "q.npy", "--nlist", "1", "--m", "2", "--epochs", "1", "--output", tmp_path / "vq")
    assert rc == 2 and "q.npy: row 2 of --queries holds NaN" in err and not (tmp_path / "vq").exists()


@pytest.mark.parametrize("key, value, message", [
    ("training.learning_rate", "abc", "training.learning_rate must be a number"),
    ("data.max_negatives", -1, "data.max_negatives must be an integer >= 1"),
    ("training.nosuchkey", 1, "training.nosuchkey is not a trainer argument"),
])
def test_student_config_values_are_checked_when_read(key, value, message):
    from retrieval_kd.errors import ConfigError
    from retrieval_kd.students import load_config

    from .conftest import ROOT

    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "configs" / "dense" / "scifact-demo.yaml", {key: value})


def test_a_folder_as_output_file_leaves_nothing_behind(tmp_path):
    from retrieval_kd.data.formats import atomic_write

    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError), atomic_write(tmp_path / "out") as fh:
        fh.write("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_named_bm25_index_of_another_corpus_is_not_rebuilt_silently(tiny_beir, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_beir, other)
    (other / "corpus.jsonl").write_text((tiny_beir / "corpus.jsonl").read_text().replace("Goldfish", "Carp"))
    common = ["search", "bm25", "--split", "test", "--index", tmp_path / "bm25", "--output", tmp_path / "r.run"]
    assert _rkd(capsys, *common, "--dataset", tiny_beir)[0] == 0
    rc, err = _rkd(capsys, *common, "--dataset", other)
    assert rc == 2 and "a BM25 index of another corpus" in err
    assert _rkd(capsys, *common, "--dataset", other, "--rebuild")[0] == 0  # on purpose


def test_teach_export_for_a_dataset_the_store_never_saw(tiny_beir, tmp_path, capsys):
    from retrieval_kd.teachers import ScoreStore

    with ScoreStore(tmp_path / "s") as s:
        s.register("bm25-x", "bm25", {})
        s.put_query("bm25-x", "other-q", {"d1": 1.0})
    rc, err = _rkd(capsys, "teach", "export", "--store", tmp_path / "s", "--teacher", "bm25", "--dataset", tiny_beir,
                   "--split", "test", "--format", "tsv", "--out", tmp_path / "m.tsv")
    assert rc == 2 and "has no scores for the queries of" in err and not (tmp_path / "m.tsv").exists()


def test_rel_level_above_every_grade_and_distill_vq_holdout(tiny_beir, tmp_path, capsys):
    from retrieval_kd.data import write_run
    from retrieval_kd.errors import ConfigError
    from retrieval_kd.quantization import DistillVQConfig

    write_run({"q1": {"d1": 1.0}}, tmp_path / "r.run")
    rc, err = _rkd(capsys, "eval", "--dataset", tiny_beir, "--split", "test", "--run", tmp_path / "r.run",
                   "--rel-level", "99")
    assert rc == 2 and "no judgement of" in err and "highest grade 2" in err
    with pytest.raises(ConfigError, match="holdout=1.5"):
        DistillVQConfig(holdout=1.5)
