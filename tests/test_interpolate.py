"""start_weight (WiSE-FT): a student's saved weights mixed with the model it started from."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from retrieval_kd.errors import ConfigError, FolderExistsError
from retrieval_kd.students.interpolate import (
    check_start_weight,
    interpolate_state,
    interpolate_student,
    recorded_start,
    snapshot,
)


def test_interpolation_equals_hand_computed_values_and_keeps_integer_buffers_and_dtypes():
    start = {"w": torch.tensor([0.0, 2.0]), "h": torch.tensor([1.0, -1.0], dtype=torch.bfloat16),
             "position_ids": torch.tensor([0, 1])}
    trained = {"w": torch.tensor([4.0, 6.0]), "h": torch.tensor([3.0, 3.0], dtype=torch.bfloat16),
               "position_ids": torch.tensor([5, 7])}
    mixed = interpolate_state(start, trained, 0.25)
    assert mixed["w"].tolist() == [3.0, 5.0]                     # 0.25 * [0, 2] + 0.75 * [4, 6]
    assert mixed["h"].dtype == torch.bfloat16 and mixed["h"].tolist() == [2.5, 2.0]   # 0.25 * 1 + 0.75 * 3, ...
    assert mixed["position_ids"].tolist() == [5, 7]             # not a weight: the trained model's
    assert interpolate_state(start, trained, 0)["w"].tolist() == [4.0, 6.0]
    assert interpolate_state(start, trained, 1)["w"].tolist() == [0.0, 2.0]
    assert start["w"].tolist() == [0.0, 2.0] and trained["w"].tolist() == [4.0, 6.0]   # inputs untouched


def test_the_start_is_kept_on_the_cpu_and_mixes_with_a_model_on_another_device():
    # the trainer may move the model (use_cpu on a GPU machine, or to the GPU): the snapshot stays on the CPU and
    # the mix happens on the trained tensor's device ("meta" stands in for an accelerator here)
    layer = torch.nn.Linear(2, 2)
    start = snapshot(layer)
    assert all(v.device.type == "cpu" for v in start.values())
    layer.to("meta")
    mixed = interpolate_state(start, layer.state_dict(), 0.5)
    assert {v.device.type for v in mixed.values()} == {"meta"}


def test_models_that_do_not_match_and_bad_weights_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="different tensors .*'extra'"):
        interpolate_state({"w": torch.zeros(2)}, {"w": torch.zeros(2), "extra": torch.zeros(1)}, 0.5)
    with pytest.raises(ConfigError, match=r"tensor 'w': shape \(3,\) in the trained model, \(2,\)"):
        interpolate_state({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, 0.5)
    for bad in (-0.1, 1.5, math.nan, True, "half", None):
        with pytest.raises(ConfigError, match="must be a number in \\[0, 1\\]"):
            check_start_weight(bad)
    from retrieval_kd.students import load_config

    (tmp_path / "c.yaml").write_text("start_weight: 2\n")
    with pytest.raises(ConfigError, match="c.yaml: start_weight must be a number in"):
        load_config(tmp_path / "c.yaml")


def test_a_student_trained_with_start_weight_is_the_mix_of_its_start_and_the_plain_run(tiny_distill, tmp_path):
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    from retrieval_kd.students import load_config, train_dense

    def weights(folder):
        return load_file(str(next(folder.rglob("model.safetensors"))))

    plain = load_config(tiny_distill, {"output_dir": str(tmp_path / "plain")})
    half = load_config(tiny_distill, {"output_dir": str(tmp_path / "half"), "start_weight": 0.5})
    train_dense(plain)
    summary = train_dense(half)
    assert summary["start_weight"] == 0.5
    start = {k: v.float() for k, v in SentenceTransformer(plain.model)[0].auto_model.state_dict().items()}
    trained, mixed = weights(tmp_path / "plain"), weights(tmp_path / "half")
    moved = [k for k in trained if torch.is_floating_point(trained[k]) and not torch.equal(trained[k], start[k])]
    assert moved                                                  # training changed weights ...
    for key in trained:                                           # ... and the saved ones are halfway back
        expected = 0.5 * start[key] + 0.5 * trained[key] if torch.is_floating_point(trained[key]) else trained[key]
        torch.testing.assert_close(mixed[key], expected, rtol=0, atol=1e-6)
    assert "WiSE-FT" in (tmp_path / "half" / "README.md").read_text()
    # the same mix made afterwards from the plain run's folder (no retraining)
    post = interpolate_student(plain.model, tmp_path / "plain", 0.5, tmp_path / "post")
    for key, value in weights(post).items():
        torch.testing.assert_close(value, mixed[key], rtol=0, atol=1e-6)
    record = json.loads((post / "rkd_training.json").read_text())
    assert record["interpolation"]["start_weight"] == 0.5 and record["summary"]["steps"] == 6
    assert record["summary"]["start_weight"] == 0.5 and record["interpolation"]["trained_sha256"]
    assert recorded_start(tmp_path / "plain") == str(Path(plain.model).resolve())   # an absolute folder
    # the same mix again is up to date (not rewritten); new trained weights are mixed again
    stamp = (post / "model.safetensors").stat().st_mtime_ns
    interpolate_student(plain.model, tmp_path / "plain", 0.5, tmp_path / "post")
    assert (post / "model.safetensors").stat().st_mtime_ns == stamp
    interpolate_student(plain.model, tmp_path / "plain", 0.25, tmp_path / "post")
    assert json.loads((post / "rkd_training.json").read_text())["interpolation"]["start_weight"] == 0.25
    # refused: a mix mixed again (made afterwards, or saved mixed by training), an output that is the student
    for mixed_folder in (post, tmp_path / "half"):
        with pytest.raises(ConfigError, match="rkd_training.json: this student is already a mix"):
            interpolate_student(plain.model, mixed_folder, 0.5, tmp_path / "twice")
    with pytest.raises(ConfigError, match="is the student itself"):
        interpolate_student(plain.model, tmp_path / "plain", 0.5, tmp_path / "plain")
    assert not (tmp_path / "twice").exists()
    with pytest.raises(FolderExistsError, match="not written by retrieval-kd"):   # a folder it did not write is kept
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("keep")
        interpolate_student(plain.model, tmp_path / "plain", 0.5, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    # the command line: the start read from the student's record; bad input is one line, exit 2
    from retrieval_kd.cli.main import main

    assert main(["-q", "train", "mix", str(tmp_path / "plain"), "--start-weight", "0.5",
                 "--output", str(tmp_path / "cli")]) == 0
    for key, value in weights(tmp_path / "cli").items():
        torch.testing.assert_close(value, mixed[key], rtol=0, atol=1e-6)
    assert main(["-q", "train", "mix", str(tmp_path / "plain"), "--start-weight", "1.5",
                 "--output", str(tmp_path / "bad")]) == 2
    assert main(["-q", "train", "mix", str(tmp_path / "nope"), "--start-weight", "0.5",
                 "--output", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_sparse_student_start_weight_one_keeps_the_idf_query_side_it_learnt(tiny_mlm, tiny_distill, tmp_path):
    from retrieval_kd.encoders.sparse import load_sparse_encoder
    from retrieval_kd.index.sparse import QueryTokenizer
    from retrieval_kd.students import load_sparse_config, train_sparse
    from retrieval_kd.students.idf import load_idf

    folder, tok = tiny_mlm
    values = dict(tiny_distill, model=str(folder))
    values["loss"] = {"name": "margin-mse", "idf_aware": True, "document_regularizer_weight": 1e-3}
    values["sampler"] = dict(values["sampler"])
    learnt = {"training.max_steps": 4, "query_learning_rate": 0.5, "training.learning_rate": 1e-9}
    vocab = tok.get_vocab()

    def query_weights(name, start_weight):
        train_sparse(load_sparse_config({**values, "output_dir": str(tmp_path / name)},
                                        {**learnt, "start_weight": start_weight, "idf_file": str(tmp_path / "idf.json")}))
        return QueryTokenizer.from_sparse_encoder(load_sparse_encoder(str(tmp_path / name))).weights

    moved_run, kept_run = query_weights("plain", 0.0), query_weights("kept", 1.0)
    idf = load_idf(tmp_path / "idf.json")
    tokens = [t for t in idf if t in vocab]
    assert any(abs(float(moved_run[vocab[t]]) - idf[t]) > 0.1 for t in tokens)   # training moved query weights
    assert all(float(kept_run[vocab[t]]) == pytest.approx(idf[t]) for t in tokens)   # start_weight 1: the start
    with pytest.raises(ConfigError, match="a sparse student; its query side is built from IDF"):
        interpolate_student(str(folder), tmp_path / "plain", 0.5, tmp_path / "mixed")
