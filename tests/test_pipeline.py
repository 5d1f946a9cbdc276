"""`rkd pipeline`: config validation, fingerprints and staleness, the dry run of the shipped configs, and a tiny
end-to-end run killed with SIGKILL during training that resumes without redoing the finished stages."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from retrieval_kd.pipeline import Pipeline, load_pipeline_config

from .conftest import ROOT, write_word_collection

CONFIGS = ROOT / "configs" / "pipeline"


@pytest.fixture
def tiny_pipeline(tmp_path, tiny_st_folder, tiny_mlm):
    """A 300-document BEIR folder with train and test splits, and a pipeline config over tiny models."""
    data = tmp_path / "beir"
    write_word_collection(data, np.random.default_rng(0), n_docs=300, doc_words=8,
                          splits={"train": range(30), "test": range(30, 40)})
    training = {"per_device_train_batch_size": 4, "max_steps": 12, "learning_rate": 1e-3, "logging_steps": 1,
                "save_strategy": "steps", "save_steps": 5, "seed": 7, "dataloader_pin_memory": False,
                "use_cpu": True}
    sampler = {"kind": "tas-balanced", "n_clusters": 3, "cluster_model": str(tiny_st_folder), "n_bins": 3}
    dense = {"name": "tiny-dense", "model": str(tiny_st_folder), "max_seq_length": 32,
             "data": {"max_negatives": 5, "dev_fraction": 0.0},
             "loss": {"name": "margin-mse"}, "sampler": sampler, "training": training}
    sparse = {"name": "tiny-sparse", "model": str(tiny_mlm[0]), "max_seq_length": 32, "query_max_length": 16,
              "data": {"max_negatives": 5, "dev_fraction": 0.0},
              "loss": {"name": "margin-mse", "idf_aware": True, "document_regularizer_weight": 1e-3},
              "sampler": sampler, "training": dict(training, max_steps=4, save_strategy="no")}
    (tmp_path / "dense.yaml").write_text(yaml.safe_dump(dense))
    (tmp_path / "sparse.yaml").write_text(yaml.safe_dump(sparse))
    config = {
        "name": "tiny", "dataset": str(data), "train_split": "train", "output_root": str(tmp_path / "experiments"),
        "eval": [{"dataset": str(data), "split": "test", "name": "tiny-test"}],
        "metrics": ["ndcg@10", "recall@100"],
        "candidates": {"top_k": 20},
        "teachers": {"members": ["bm25", f"bi-encoder:{tiny_st_folder},max_seq_length=32"], "fit_step": 0.5,
                     "rerank_depth": 20},
        "students": {"dense": {"config": str(tmp_path / "dense.yaml")},
                     "sparse": {"config": str(tmp_path / "sparse.yaml")}},
        "index": {"types": ["flat", "hnsw", "ivfpq", "distill-vq"], "nlist": 4, "nprobe": 2, "bytes": [8, 4],
                  "distill_vq": {"epochs": 1, "pseudo_queries": 20, "top_k": 10, "n_inlist": 5, "n_random": 5},
                  "speed_nprobe": [1, 4]},
        "retrieve_top_k": 100,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _rkd(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "retrieval_kd.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env or os.environ.copy(), timeout=600)


KILLER = """
import os, signal, sys
from transformers import TrainerCallback
import retrieval_kd.students as students
from retrieval_kd.students.dense import train_dense

class KillAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 7:          # after checkpoint-5 was saved, before the end
            os.kill(os.getpid(), signal.SIGKILL)

students.train_dense = lambda config, collection=None, callbacks=None: train_dense(config, collection, [KillAt()])
from retrieval_kd.cli.main import main
sys.exit(main(["pipeline", sys.argv[1]]))
"""


def test_killed_during_training_resumes_without_redoing_finished_stages(tiny_pipeline, tmp_path):
    killer = tmp_path / "kill_in_training.py"
    killer.write_text(KILLER)
    first = subprocess.run([sys.executable, str(killer), str(tiny_pipeline)], capture_output=True, text=True,
                           cwd=ROOT, timeout=600)
    assert first.returncode == -9, first.stderr[-3000:]
    work = tmp_path / "experiments" / "tiny"
    stages = work / "stages"
    assert sorted(p.stem for p in stages.glob("*.json")) == ["mine", "teach"]   # training never finished
    assert (work / "models" / "dense-checkpoints" / "checkpoint-5").is_dir()
    before = {p.stem: p.read_text() for p in stages.glob("*.json")}

    second = _rkd("pipeline", str(tiny_pipeline))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "stage mine: up to date" in second.stderr and "stage teach: up to date" in second.stderr
    for name, text in before.items():                                          # not redone: markers untouched
        assert (stages / f"{name}.json").read_text() == text
    dense = json.loads((stages / "train-dense.json").read_text())["summary"]
    assert dense["resumed_from"].endswith("checkpoint-5") and dense["steps"] == 12
    assert sorted(p.stem for p in stages.glob("*.json")) == sorted(
        ["mine", "teach", "train-dense", "train-sparse", "index", "retrieve", "evaluate", "report"])

    # the report and its plots, the runs (TREC files) and the metrics with p-values against BM25
    report = (work / "report.md").read_text()
    assert "| BM25 (bm25s) |" in report and "Distill-VQ (IVFPQ), 8 B/vector" in report
    assert "inference-free sparse student" in report and "resumed from" in report
    for png in ("tiny-test-quality-vs-bytes.png", "tiny-test-qps-vs-recall.png", "training-loss.png"):
        assert (work / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((work / "metrics.json").read_text())["tiny-test"]["runs"]
    assert {"bm25", "ensemble", "dense-initial", "dense-flat", "dense-distill-vq-4", "sparse-inference-free"} <= set(metrics)
    assert 0 <= metrics["dense-flat"]["p_vs_bm25"]["ndcg@10"] <= 1
    first_line = (work / "runs" / "tiny-test" / "dense-ivfpq-8.run").read_text().splitlines()[0].split()
    assert len(first_line) == 6 and first_line[1] == "Q0"
    # exact search through the FAISS flat index equals the flat run of the student computed directly
    from retrieval_kd.data import load_collection, read_run
    from retrieval_kd.search.dense import dense_search

    coll = load_collection(str(tmp_path / "beir"))
    direct = dense_search(str(work / "models" / "dense"), coll, coll.queries("test"), 10, 32)
    flat = read_run(work / "runs" / "tiny-test" / "dense-flat.run")
    for q, docs in direct.items():
        top = sorted(flat[q].items(), key=lambda kv: -kv[1])[:10]
        assert [d for d, _ in top] == list(docs)[:10]

    third = _rkd("pipeline", str(tiny_pipeline))                                 # all done: nothing runs
    assert third.returncode == 0 and third.stderr.count("up to date") == 8, third.stderr[-2000:]
    assert "| BM25 (bm25s) |" in third.stdout


def test_a_changed_stage_config_reruns_that_stage_and_what_reads_it(tiny_pipeline, tmp_path):
    base = load_pipeline_config(tiny_pipeline)
    changed = load_pipeline_config(tiny_pipeline, {"index.nprobe": 3})
    a, b = Pipeline(base), Pipeline(changed)
    same = [s.name for s in a.stages if a.fingerprint(s.name) == b.fingerprint(s.name)]
    assert same == ["mine", "teach", "train-dense", "train-sparse", "index"]   # nprobe is read at retrieval
    teachers = load_pipeline_config(tiny_pipeline, {"teachers.fit_step": 0.25})
    c = Pipeline(teachers)
    assert [s.name for s in a.stages if a.fingerprint(s.name) == c.fingerprint(s.name)] == ["mine"]
    # a marker with another fingerprint is stale; with the same one but a missing output, todo
    marker = a.marker_path("mine")
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"fingerprint": "0" * 16}))
    assert a.status("mine") == "stale"
    marker.write_text(json.dumps({"fingerprint": a.fingerprint("mine")}))
    assert a.status("mine") == "todo"
    for p in a.stage("mine").outputs:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("")
    assert a.status("mine") == "done"


@pytest.mark.parametrize("name", ["scifact-demo", "msmarco-trec-dl", "beir-zero-shot"])
def test_shipped_configs_validate_and_dry_run(name, mirror, tmp_path):
    out = _rkd("pipeline", str(CONFIGS / f"{name}.yaml"), "--dry-run", "--json", "--set", f"output_root={tmp_path}")
    assert out.returncode == 0, out.stderr[-2000:]
    plan = json.loads(out.stdout)
    assert [r["stage"] for r in plan] == ["mine", "teach", "train-dense", "train-sparse", "index", "retrieve",
                                          "evaluate", "report"]
    # nothing has run under a fresh output root: every stage is to do, and every output lies under it
    assert [r["status"] for r in plan] == ["todo"] * len(plan)
    assert all(r["outputs"] and all(o.startswith(str(tmp_path)) for o in r["outputs"]) for r in plan)
    text = _rkd("pipeline", str(CONFIGS / f"{name}.yaml"), "--dry-run")
    assert "valid" in text.stdout and "out: experiments/" in text.stdout


def test_bad_configs_name_the_file_and_key(tiny_pipeline, tmp_path):
    values = yaml.safe_load(tiny_pipeline.read_text())
    cases = [
        ({"index": {**values["index"], "nprobes": 3}}, "unknown key 'index.nprobes'"),
        ({"eval": [{"dataset": "no-such-dataset", "split": "test"}]}, "eval[0]: dataset 'no-such-dataset'"),
        ({"eval": [{"dataset": values["dataset"], "split": "train"}]}, "eval[0] is the training split"),
        ({"teachers": {"members": ["bm25", "nonsense:model"]}}, "teachers.members[1] 'nonsense:model'"),
        ({"index": {**values["index"], "types": ["flat", "annoy"]}}, "unknown type 'annoy'"),
        ({"students": {"dense": {"config": str(tmp_path / "missing.yaml")}}}, "students.dense"),
    ]
    for change, message in cases:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({**values, **change}))
        with pytest.raises(ValueError) as err:
            load_pipeline_config(path)
        assert message in str(err.value) and str(path) in str(err.value)
    out = _rkd("pipeline", str(path), "--dry-run")
    assert out.returncode == 2 and "rkd pipeline: error:" in out.stderr and "Traceback" not in out.stderr


def test_dry_run_catches_what_can_be_known_without_running(tiny_pipeline, tmp_path, caplog, monkeypatch):
    """Types of every key, metric names, splits, PQ sizes against the student's dimension, ranges, folder names."""
    values = yaml.safe_load(tiny_pipeline.read_text())
    ix, teachers, data = values["index"], values["teachers"], values["dataset"]
    cases = [
        ({"metrics": ["ndcg@10", "ndgc@10"]}, "metrics: "),
        ({"metrics": ["ndcg@-5"]}, "'ndcg@-5'"),
        ({"train_split": "dev"}, "train_split: dataset"),
        ({"eval": [{"dataset": data, "split": "validation"}]}, "eval[0].split: dataset"),
        ({"eval": [{"dataset": "scifact", "split": "dev"}]}, "eval[0].split: dataset 'scifact' has no split 'dev'"),
        ({"index": {**ix, "bytes": [8, 6]}}, "index.bytes: 6 does not divide the dense student's embedding dimension 16"),
        ({"teachers": {**teachers, "rerank_depth": -5}}, "teachers.rerank_depth must be a number >= 1"),
        ({"teachers": {**teachers, "rerank_depth": 500}}, "teachers.rerank_depth (500) is more than retrieve_top_k"),
        ({"teachers": {**teachers, "fit_weights": "false"}}, "teachers.fit_weights must be true or false"),
        ({"teachers": {**teachers, "members": ["bm25,k1=abc"]}}, "option k1='abc' must be a number"),
        ({"index": {**ix, "threads": "many"}}, "index.threads must be an integer, got the string 'many'"),
        ({"index": {**ix, "nlist": True}}, "index.nlist must be an integer"),
        ({"index": {**ix, "nprobe": 8}}, "index.nprobe: 8 is more than index.nlist (4)"),
        ({"index": {**ix, "speed_nprobe": [1, "x"]}}, "index.speed_nprobe[1] must be an integer"),
        ({"metrics": "ndcg@10"}, "metrics must be a list of strings"),
        ({"candidates": {"sources": ["bm25", 3]}}, "candidates.sources[1] must be a string"),
        ({"students": {"dense": "dense.yaml"}}, "students.dense must be a mapping or null"),
        ({"eval": [{"split": "test"}]}, "missing required key 'eval[0].dataset'"),
        ({"name": ".."}, "name '..' must be a folder name"),
        ({"name": "a/../../b"}, "name 'a/../../b' must be a folder name"),
        ({"eval": [{"dataset": data, "split": "test", "name": ".."}]}, "eval[0].name '..' must be a folder name"),
        ({"expected_minutes": "soon"}, "expected_minutes must be a number or null"),
    ]
    path = tmp_path / "bad.yaml"
    for change, message in cases:
        path.write_text(yaml.safe_dump({**values, **change}))
        with pytest.raises(ValueError) as err:
            load_pipeline_config(path)
        assert message in str(err.value) and str(path) in str(err.value), (change, str(err.value))
    # what is not known here is skipped with a log line, never guessed
    dense = yaml.safe_load((tmp_path / "dense.yaml").read_text())
    (tmp_path / "absent.yaml").write_text(yaml.safe_dump({**dense, "model": "nobody/not-here"}))
    path.write_text(yaml.safe_dump({**values, "students": {"dense": {"config": str(tmp_path / "absent.yaml")}},
                                    "index": {**ix, "bytes": [6]}}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.INFO, logger="retrieval_kd.pipeline.config"):
        load_pipeline_config(path)
    assert "index.bytes not checked" in caplog.text and "'nobody/not-here'" in caplog.text


# ------------------------------------------------------------------------------------------------------ encoding
@pytest.fixture
def cpu(monkeypatch):
    """``cpu("amx_bf16", ...)``: pretend the CPU has these flags (what ``encoding: auto`` picks by) and no OpenVINO
    (so ``auto`` means torch-bf16 or fp32 whatever is installed); the pipeline's resolutions are forgotten before
    and after."""
    from retrieval_kd.encoders import backends
    from retrieval_kd.pipeline.config import resolved_encoding

    def pretend(*flags):
        resolved_encoding.cache_clear()
        monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(backends, "openvino_installed", lambda: False)

    yield pretend
    resolved_encoding.cache_clear()


def _same(a: Pipeline, b: Pipeline) -> list[str]:
    return [s.name for s in a.stages if a.fingerprint(s.name) == b.fingerprint(s.name)]


def test_encoding_is_validated_and_in_the_fingerprints_of_the_stages_that_encode(tiny_pipeline, tmp_path, cpu):
    from retrieval_kd.errors import ConfigError

    values = yaml.safe_load(tiny_pipeline.read_text())
    path = tmp_path / "bad.yaml"
    for change, key in (({"encoding": "fp8"}, "encoding"), ({"teachers": {**values["teachers"], "encoding": "bf16"}},
                                                              "teachers.encoding")):
        path.write_text(yaml.safe_dump({**values, **change}))
        with pytest.raises(ConfigError) as err:
            load_pipeline_config(path)
        assert f"{path}: {key} must be" in str(err.value) and "auto, torch, torch-bf16" in str(err.value)

    cpu("avx2", "avx512f", "amx_bf16", "avx512_bf16")
    base = Pipeline(load_pipeline_config(tiny_pipeline))
    assert "encoding" not in base.stage("index").params             # torch: the fingerprints of earlier releases
    auto = Pipeline(load_pipeline_config(tiny_pipeline, {"encoding": "auto"}))
    assert _same(base, auto) == ["mine", "teach", "train-dense", "train-sparse"]   # index, retrieve, evaluate, report
    plan = {row["stage"]: row for row in auto.plan()}
    assert plan["index"]["encoding"]["setting"] == "auto" and set(plan["index"]["encoding"]) == {"setting", "dense",
                                                                                                "sparse"}
    dense = plan["retrieve"]["encoding"]["dense"]
    assert dense["backend"] == "torch-bf16" and dense["isa"] == "amx-bf16" and "AMX" in dense["reason"]
    assert "encoding" not in plan["train-dense"] and plan["teach"]["encoding"]["dense"]["backend"] == "torch"
    named = Pipeline(load_pipeline_config(tiny_pipeline, {"encoding": "torch-bf16"}))
    assert named.stage("retrieve").params["encoding"] == auto.stage("retrieve").params["encoding"]  # auto resolved

    cpu("avx2", "avx512f")                                          # the same config on a CPU without bf16
    plain = Pipeline(load_pipeline_config(tiny_pipeline, {"encoding": "auto"}))
    assert {r["stage"]: r for r in plain.plan()}["retrieve"]["encoding"]["dense"]["backend"] == "torch"   # fp32
    assert plain.fingerprint("index") != auto.fingerprint("index")
    # dense training candidates are encoded too: then mining and everything after it follow the setting
    mined = {"candidates.sources": ["bm25", "dense"]}
    cpu("amx_bf16")
    assert _same(Pipeline(load_pipeline_config(tiny_pipeline, mined)),
                 Pipeline(load_pipeline_config(tiny_pipeline, {**mined, "encoding": "torch-bf16"}))) == []


def test_teachers_encoding_reaches_the_bi_encoder_members_without_their_own(tiny_pipeline, tiny_st_folder, cpu):
    from retrieval_kd.pipeline import stages as st

    cpu("avx2", "amx_bf16")
    members = ["bm25", f"bi-encoder:{tiny_st_folder},max_seq_length=32", f"bi-encoder:{tiny_st_folder},encoding=torch"]
    config = load_pipeline_config(tiny_pipeline, {"teachers.members": members, "teachers.encoding": "auto"})
    bm25, chosen, own = st._members(st.Context(config), config.dataset)
    assert (chosen.encoding.backend, chosen.encoding.isa) == ("torch-bf16", "amx-bf16") and own.encoding == "torch"
    fp32 = load_pipeline_config(tiny_pipeline, {"teachers.members": members})
    assert st._members(st.Context(fp32), fp32.dataset)[1].encoding == "torch"            # the default: fp32
    assert chosen.fingerprint != st._members(st.Context(fp32), fp32.dataset)[1].fingerprint   # its own scores
    assert _same(Pipeline(fp32), Pipeline(config)) == ["mine"]        # teaching and everything after it rerun


def test_auto_is_recorded_in_the_marker_and_the_report(tiny_pipeline, cpu, monkeypatch):
    import retrieval_kd.teachers as teachers
    from retrieval_kd.pipeline.report import write_report

    cpu("amx_bf16")
    real, seen = teachers.mine_candidates, []

    def mine(collection, split, k=100, sources=("bm25",), encoding="torch", **kw):   # no dense model loaded
        seen.append(encoding)
        return real(collection, split, k=k, sources=["bm25"], **kw)

    monkeypatch.setattr(teachers, "mine_candidates", mine)
    config = load_pipeline_config(tiny_pipeline, {"encoding": "auto", "candidates.sources": ["bm25", "dense"]})
    Pipeline(config).run(until="mine")
    assert [e.backend for e in seen] == ["torch-bf16"]
    marker = json.loads((config.work_dir / "stages" / "mine.json").read_text())
    assert marker["encoding"]["setting"] == "auto" and marker["encoding"]["dense"]["isa"] == "amx-bf16"
    report = write_report(config.work_dir, config).read_text()
    assert "Students and the initial model encoded with `encoding: auto`: dense torch-bf16 (amx-bf16; the CPU has AMX" \
        in report


def test_label_weight_at_its_default_keeps_the_train_fingerprint_and_set_changes_it(tiny_pipeline, tmp_path):
    values = yaml.safe_load(tiny_pipeline.read_text())
    dense = values["students"]["dense"]
    path = tmp_path / "dual.yaml"

    def pipeline(**loss):
        path.write_text(yaml.safe_dump({**values, "students": {**values["students"], "dense": {
            **dense, "set": {**(dense.get("set") or {}), "loss.name": "dual", **loss}}}}))
        return Pipeline(load_pipeline_config(path))

    plain, zero, hinton = pipeline(), pipeline(**{"loss.label_weight": 0.0}), pipeline(**{"loss.label_weight": 1.0})
    assert "label_weight" not in plain.stage("train-dense").params["config"]["loss"]   # older fingerprints hold
    assert plain.fingerprint("train-dense") == zero.fingerprint("train-dense")
    assert hinton.fingerprint("train-dense") != plain.fingerprint("train-dense")
    assert hinton.stage("train-dense").params["config"]["loss"]["label_weight"] == 1.0


def test_start_weight_at_its_default_keeps_the_train_fingerprints_and_set_changes_them(tiny_pipeline, tmp_path):
    values = yaml.safe_load(tiny_pipeline.read_text())
    path = tmp_path / "wise.yaml"

    def pipeline(**top):
        students = {kind: {**spec, "set": {**(spec.get("set") or {}), **top}}
                    for kind, spec in values["students"].items()}
        path.write_text(yaml.safe_dump({**values, "students": students}))
        return Pipeline(load_pipeline_config(path))

    plain, zero, half = pipeline(), pipeline(start_weight=0.0), pipeline(start_weight=0.5)
    for stage in (f"train-{kind}" for kind in values["students"]):
        assert "start_weight" not in plain.stage(stage).params["config"]      # older fingerprints hold
        assert plain.fingerprint(stage) == zero.fingerprint(stage)
        assert half.fingerprint(stage) != plain.fingerprint(stage)
        assert half.stage(stage).params["config"]["start_weight"] == 0.5
