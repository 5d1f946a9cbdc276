"""`rkd index build`, `rkd vq train` and `rkd train sparse` killed with SIGKILL at chosen points: the killed run
leaves no output that a later command accepts (no folder, or the previous one intact), a rerun resumes where
the killed one stopped, and the finished result equals an uninterrupted run's, bit for bit (seeded, one thread),
with no temporary leftovers.

Each test drives one server process (``SERVER``) that imports torch, FAISS, transformers once and forks a child per
run, so a chain of killed runs costs one interpreter start, not one each."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from retrieval_kd.utils.fs import MARKER, folder_kind

from .conftest import ROOT

# Reads one job per line on stdin: {"commands": [argv, ...], "log": path, "kill": {...}}; forks a child that runs
# the rkd commands (stdout and stderr to the log), answers {"rc": exit code} (-9: killed). "kill": {"target":
# "module:Attr.path", "when": "before"|"after", "n": N, "match": regex} sends the child SIGKILL at the N-th call of
# the target (counting only calls whose first argument's file name matches the regex, if given).
SERVER = r"""
import json, os, re, signal, sys, traceback
import torch
import torch._dynamo  # what torch.optim imports on first use: seconds, paid once here rather than in every child
torch.set_num_threads(1)
for name in sys.argv[1:]:
    __import__(name)
from retrieval_kd.cli.main import main


def arm(kill):
    import importlib
    module_name, _, path = kill["target"].partition(":")
    owner = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    original, calls, n = getattr(owner, name), [0], kill.get("n", 1)
    match = re.compile(kill["match"]) if kill.get("match") else None

    def wrapper(*args, **kwargs):
        counted = match is None or bool(args and match.search(os.path.basename(str(args[0]))))
        calls[0] += counted
        if counted and calls[0] == n and kill.get("when", "before") == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if counted and calls[0] == n and kill.get("when") == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, wrapper)


for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
        code = 0
        try:
            if job.get("kill"):
                arm(job["kill"])
            for argv in job["commands"]:
                code = main(argv)
                if code:
                    break
        except BaseException:
            traceback.print_exc()
            code = 3
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Rkd:
    """``rkd(*commands, kill=None)`` runs commands in a forked child of the server; returns its log."""

    def __init__(self, tmp_path: Path, preload: list[str]):
        server = tmp_path / "rkd_server.py"
        server.write_text(SERVER)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                   HF_HUB_OFFLINE="1")
        self.tmp_path, self.runs = tmp_path, 0
        self.proc = subprocess.Popen([sys.executable, str(server), *preload], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)

    def __call__(self, *commands: list, kill: dict | None = None) -> str:
        self.runs += 1
        log = self.tmp_path / f"run-{self.runs}.log"
        job = {"commands": [[str(a) for a in argv] for argv in commands], "log": str(log), "kill": kill}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], 300)
        assert ready, f"run {self.runs} did not finish in 300 s"
        rc = json.loads(self.proc.stdout.readline())["rc"]
        text = log.read_text(errors="replace")
        expected = -9 if kill else 0
        assert rc == expected, f"run {self.runs}: exit {rc}, expected {expected}:\n{text[-3000:]}"
        return text

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.kill()  # no child is running between jobs; an orderly interpreter exit only costs time
        self.proc.wait(timeout=60)


@pytest.fixture
def rkd(tmp_path):
    servers = []

    def start(*preload: str) -> Rkd:
        servers.append(Rkd(tmp_path, list(preload)))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _files(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but the marker's (it holds the time of writing)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if re.search(r"\.(tmp|old|part)$", p.name))


def _swap(name: str) -> dict:
    """Kill just before the finished temporary folder of output ``name`` is renamed into place."""
    return {"target": "os:replace", "match": rf"^\.{re.escape(name)}\.\d+\.[0-9a-f]*\.tmp$"}


@pytest.fixture
def vectors(tmp_path) -> dict:
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((600, 16)).astype(np.float32)
    queries = rng.standard_normal((40, 16)).astype(np.float32)
    np.save(tmp_path / "docs.npy", docs / np.linalg.norm(docs, axis=1, keepdims=True))
    np.save(tmp_path / "queries.npy", queries)
    (tmp_path / "ids.json").write_text(json.dumps([f"d{i}" for i in range(600)]))
    return {"embeddings": tmp_path / "docs.npy", "doc-ids": tmp_path / "ids.json", "queries": tmp_path / "queries.npy"}


def test_index_build_killed_while_saving_leaves_no_folder_or_the_old_one(tmp_path, rkd, vectors, tiny_beir, capsys):
    from retrieval_kd.cli.main import main
    from retrieval_kd.index.dense import load_index

    run = rkd("faiss", "retrieval_kd.index.dense")
    source = ["--embeddings", vectors["embeddings"], "--doc-ids", vectors["doc-ids"]]
    flat = ["index", "build", "--type", "flat", *source]
    ivfpq = ["index", "build", "--type", "ivfpq", *source, "--nlist", "4", "--m", "4"]
    out_flat, out_ivf, refs = tmp_path / "flat", tmp_path / "ivfpq", tmp_path / "refs"
    run([*flat, "--output", refs / "flat"], [*ivfpq, "--output", refs / "ivfpq"],
        [*ivfpq[:-1], "8", "--output", out_ivf])                                  # an older index at out_ivf
    old = _files(out_ivf)

    # a first build killed after writing index.faiss into its temporary folder: no folder, a later search fails
    run([*flat, "--output", out_flat], kill={"target": "faiss:write_index", "when": "after"})
    assert not out_flat.exists() and _leftovers(tmp_path)                         # the kill landed mid-save
    search = ["search", "dense", "--index", out_flat, "--dataset", tiny_beir, "--split", "test",
              "--output", tmp_path / "x.run"]
    assert main([str(a) for a in search]) == 2
    assert "no such index folder" in capsys.readouterr().err

    # a rebuild killed the same way: the old index, intact
    run([*ivfpq, "--output", out_ivf], kill={"target": "faiss:write_index", "when": "after"})
    assert _files(out_ivf) == old and load_index(out_ivf)[2]["m"] == 8
    # a rebuild killed between the two renames (the old folder moved aside, the new one complete): nothing at the
    # path, and the next reader puts the old one back, whole
    run([*ivfpq, "--output", out_ivf], kill=_swap("ivfpq"))
    assert not out_ivf.exists()
    assert load_index(out_ivf)[2]["m"] == 8 and _files(out_ivf) == old

    run([*flat, "--output", out_flat], [*ivfpq, "--output", out_ivf])
    for out in (out_flat, out_ivf):
        assert folder_kind(out) == "dense-index"
        assert _files(out) == _files(refs / out.name)                             # index.faiss, ids, sidecar
    assert _leftovers(tmp_path) == []


def test_vq_train_killed_anywhere_resumes_per_epoch_and_equals_an_uninterrupted_run(tmp_path, rkd, vectors):
    from safetensors.torch import load_file

    from retrieval_kd.cli.main import main

    run = rkd("faiss", "retrieval_kd.index", "retrieval_kd.quantization", "safetensors.torch")
    train = ["vq", "train", *(x for k, v in vectors.items() for x in (f"--{k}", v)), "--nlist", "4", "--m", "4",
             "--epochs", "3", "--pseudo-queries", "24"]                          # 64 queries: 2 steps per epoch
    out, ref = tmp_path / "dvq", tmp_path / "ref"
    checkpoints = tmp_path / "dvq-checkpoints"
    # killed in epoch 2: epoch 1's checkpoint, no output
    run([*train, "--output", out],
        kill={"target": "retrieval_kd.quantization.learnable_ivfpq:LearnableIVFPQ.reconstruct", "n": 3})
    assert not out.exists() and sorted(p.name for p in checkpoints.iterdir()) == ["epoch-1"]
    # resumed, then killed while writing epoch 2's checkpoint: epoch 1's is still the one to resume from
    killed = run([*train, "--output", out], kill={"target": "safetensors.torch:save_file", "when": "after"})
    assert "resuming from" in killed and "(1 epochs done)" in killed
    assert not out.exists() and [p.name for p in checkpoints.iterdir() if not p.name.startswith(".")] == ["epoch-1"]
    assert _leftovers(checkpoints)                                                # the torn checkpoint, aside
    # resumed, trained to the end, then killed just before the index folder is swapped in
    run([*train, "--output", out], kill=_swap("dvq"))
    assert not out.exists() and sorted(p.name for p in checkpoints.iterdir()) == ["epoch-3"]
    assert main(["index", "build", "--type", "distill-vq", "--vq", str(out), "--output", str(tmp_path / "x")]) == 2

    done = run([*train, "--output", out], [*train, "--output", ref, "--keep-checkpoints"])
    assert "(3 epochs done)" in done                                              # nothing retrained
    assert [p.name for p in (tmp_path / "ref-checkpoints").iterdir()] == ["epoch-3"]   # only the newest is kept
    assert _files(out) == _files(ref)                                             # index.faiss, module, history
    module, expected = load_file(str(out / "distill_vq.safetensors")), load_file(str(ref / "distill_vq.safetensors"))
    assert module.keys() == expected.keys() and all(torch.equal(module[k], expected[k]) for k in module)
    assert json.loads((out / "rkd_index.json").read_text())["history"][-1]["epoch"] == 3
    assert not checkpoints.exists()                                               # removed once the index is in
    assert _leftovers(tmp_path) == []


def test_vq_resume_in_process_with_holdout_opq_reassign_and_checkpoints_not_reused(tmp_path, caplog, monkeypatch):
    """The library function: an interrupted run resumes to the uninterrupted result (held-out selection, OPQ and
    re-assignment included); a checkpoint of another run, or a damaged one, is never resumed from."""
    from retrieval_kd.quantization import DistillVQConfig, LearnableIVFPQ, train_distill_vq

    rng = np.random.default_rng(2)
    docs, queries = rng.standard_normal((300, 8)).astype(np.float32), rng.standard_normal((24, 8)).astype(np.float32)
    cfg = DistillVQConfig(nlist=4, m=2, nbits=4, opq=True, holdout=0.25, reassign=True, epochs=3, top_k=10,
                          n_inlist=5, n_random=5, batch_size=8, lr=1e-2)          # 18 training queries: 3 steps
    ck = tmp_path / "ck"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = train_distill_vq(docs, queries, cfg)
        reconstruct, calls = LearnableIVFPQ.reconstruct, []

        def interrupted(self, *args):
            calls.append(1)
            if len(calls) == 7:                 # 1: held-out recall at 0; 2-4: epoch 1; 5: its recall; 6-8: epoch 2
                raise KeyboardInterrupt
            return reconstruct(self, *args)

        monkeypatch.setattr(LearnableIVFPQ, "reconstruct", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train_distill_vq(docs, queries, cfg, checkpoint_dir=ck)
        monkeypatch.setattr(LearnableIVFPQ, "reconstruct", reconstruct)
        assert [p.name for p in ck.iterdir()] == ["epoch-1"]
        with caplog.at_level("INFO", logger="retrieval_kd.quantization"):
            resumed = train_distill_vq(docs, queries, cfg, checkpoint_dir=ck)
        assert "(1 epochs done)" in caplog.text
        assert resumed.history == ref.history and ref.history[-1]["selected_epoch"] == 1  # the checkpoint's best
        for name, value in ref.module.state_dict().items():
            assert torch.equal(resumed.module.state_dict()[name], value), name
        assert np.array_equal(resumed.lists, ref.lists) and np.array_equal(resumed.codes, ref.codes)

        caplog.clear()
        with caplog.at_level("INFO", logger="retrieval_kd.quantization"):
            other = train_distill_vq(docs, queries[:12], cfg, checkpoint_dir=ck)  # other queries: from scratch
        assert "written by another run" in caplog.text and "epochs done" not in caplog.text
        (ck / "epoch-3" / "state.safetensors").write_bytes(b"damaged")
        caplog.clear()
        with caplog.at_level("INFO", logger="retrieval_kd.quantization"):
            again = train_distill_vq(docs, queries[:12], cfg, checkpoint_dir=ck)
        assert "unreadable checkpoint" in caplog.text and "epochs done" not in caplog.text
        assert again.history == other.history and np.array_equal(again.codes, other.codes)
    finally:
        torch.set_num_threads(threads)


def test_sparse_student_killed_mid_checkpoint_and_mid_save_resumes_to_the_same_weights(tmp_path, rkd, tiny_mlm,
                                                                                       tiny_distill):
    from safetensors.torch import load_file

    run = rkd("transformers.trainer", "sentence_transformers", "sentence_transformers.sparse_encoder.trainer",
              "retrieval_kd.students", "retrieval_kd.students.sparse", "faiss")
    folder, _ = tiny_mlm
    values = dict(tiny_distill, model=str(folder))
    values["loss"] = {"name": "margin-mse", "idf_aware": True, "document_regularizer_weight": 1e-3}
    values["training"] = dict(values["training"], max_steps=6, save_strategy="steps", save_steps=2)
    config = tmp_path / "sparse.yaml"
    config.write_text(yaml.safe_dump(values))
    out, ref = tmp_path / "student", tmp_path / "ref"
    train = ["train", "sparse", "--config", config]
    checkpoints = tmp_path / "student-checkpoints"

    # killed while writing checkpoint-4 (model and optimizer written, not the RNG and trainer state)
    run([*train, "--set", f"output_dir={out}"], kill={"target": "transformers.trainer:Trainer._save_rng_state", "n": 2})
    assert not out.exists() and (checkpoints / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (checkpoints / "checkpoint-4" / "trainer_state.json").exists()
    # resumed from checkpoint-2 (the torn checkpoint-4 is passed over), killed just before the student is swapped in
    killed = run([*train, "--set", f"output_dir={out}"], kill=_swap("student"))
    assert "checkpoint-4: incomplete checkpoint" in killed and "resuming from" in killed
    assert not out.exists() and _leftovers(tmp_path)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-4", "checkpoint-6"]

    done = run([*train, "--set", f"output_dir={out}"], [*train, "--set", f"output_dir={ref}"])  # and a reference
    assert "checkpoint-6: training had finished" in done                          # loaded, no extra step trained
    assert folder_kind(out) == "sparse-student"
    weights = sorted(p.relative_to(out) for p in out.rglob("*.safetensors"))
    assert weights and weights == sorted(p.relative_to(ref) for p in ref.rglob("*.safetensors"))
    for name in weights:
        got, expected = load_file(str(out / name)), load_file(str(ref / name))
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got), name
    assert json.loads((out / "rkd_training.json").read_text())["summary"]["steps"] == 6
    assert _leftovers(tmp_path) == []
