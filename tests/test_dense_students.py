"""Dense students: losses against hand-computed values, sampler properties, training, resume, DDP."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from retrieval_kd.students.losses import DualTeacherLoss, build_loss, inbatch_hard, inbatch_kl
from retrieval_kd.students.sampler import TASBalancedBatchSampler, margin_bins, tas_sampler

from .conftest import ROOT


# ------------------------------------------------------------------------------------------------------ losses
def _emb(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_margin_mse_equals_hand_computed_value():
    q, p, n = _emb([[1, 0], [0, 1]]), _emb([[0.5, 0.5], [0, 2]]), _emb([[1, 0], [1, 1]])
    labels = _emb([[3.0, 1.0], [0.5, 1.0]])          # teacher margins 2.0 and -0.5
    loss = build_loss("margin-mse", model=None).compute_loss_from_embeddings([q, p, n], labels)
    # student margins: q1: 0.5 - 1 = -0.5 ; q2: 2 - 1 = 1  -> ((-0.5 - 2)^2 + (1 + 0.5)^2) / 2 = (6.25 + 2.25) / 2
    assert float(loss) == pytest.approx(4.25)


def test_listwise_kl_equals_hand_computed_value():
    q, p, n = _emb([[1.0, 0.0]]), _emb([[2.0, 0.0]]), _emb([[0.0, 1.0]])
    labels = _emb([[1.0, 0.0]])
    loss = build_loss("kl", model=None, kl_temperature=1.0).compute_loss_from_embeddings([q, p, n], labels)
    # student scores (2, 0), teacher (1, 0): KL(t || s) = sum t log t/s
    t = np.exp([1, 0]) / np.exp([1, 0]).sum()
    s = np.exp([2, 0]) / np.exp([2, 0]).sum()
    assert float(loss) == pytest.approx(float((t * np.log(t / s)).sum()), rel=1e-5)


def test_inbatch_kl_and_dual_teacher_equal_hand_computed_values():
    q = _emb([[1.0, 0.0], [0.0, 1.0]])
    pos, neg = _emb([[1.0, 0.0], [0.0, 1.0]]), _emb([[0.0, 1.0], [1.0, 0.0]])
    teacher = _emb([[0.9, 0.1, 0.2, 0.8], [0.1, 0.9, 0.8, 0.2]])   # (B, 2B) over [p1, p2, n1, n2]
    tau = 0.5
    value = inbatch_kl(q, torch.cat([pos, neg]), teacher, tau, tau)
    student = (q @ torch.cat([pos, neg]).T).numpy() / tau        # [[1,0,0,1],[0,1,1,0]] / tau
    expected = 0.0
    for i in range(2):
        t = np.exp(teacher[i].numpy() / tau) / np.exp(teacher[i].numpy() / tau).sum()
        s = np.exp(student[i]) / np.exp(student[i]).sum()
        expected += (t * np.log(t / s)).sum()
    assert float(value) == pytest.approx(expected / 2, rel=1e-5)

    loss = DualTeacherLoss(model=None, inbatch_weight=0.5, student_temperature=tau, teacher_temperature=tau)
    labels = torch.cat([_emb([[1.0, 0.0], [0.2, 0.4]]), teacher], dim=1)
    # pairwise: student margins 1 - 0 = 1 for both; teacher margins 1 and -0.2 -> (0 + 1.44) / 2 = 0.72
    total = loss.compute_loss_from_embeddings([q, pos, neg], labels)
    assert float(total) == pytest.approx(0.72 + 0.5 * expected / 2, rel=1e-5)
    with pytest.raises(ValueError, match="does not match expected"):
        loss.compute_loss_from_embeddings([q, pos, neg], labels[:, :2])


def test_inbatch_kl_leaves_out_pairs_the_teacher_scores_minus_infinity():
    from retrieval_kd.students.data import StoredInBatchTeacher

    q = _emb([[1.0, 0.0], [0.0, 1.0]])
    docs = _emb([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    stored = StoredInBatchTeacher({"a": {"x": 2.0, "z": 1.0}, "b": {"y": 3.0, "x": 0.0}}, exclude={"a": "y"})
    teacher = torch.from_numpy(stored.scores(["a", "b"], ["x", "y", "z"]))
    # a's excluded source y is -inf, b's unscored z its floor 0.0
    assert teacher[0, 1] == float("-inf") and teacher.tolist()[1] == [0.0, 3.0, 0.0]
    tau = 0.5
    value = inbatch_kl(q, docs, teacher, tau, tau)
    expected = 0.0
    for i, cols in ((0, [0, 2]), (1, [0, 1, 2])):                 # query a over x and z only
        t = np.exp(teacher[i, cols].numpy() / tau) / np.exp(teacher[i, cols].numpy() / tau).sum()
        logits = (q[i] @ docs[cols].T).numpy() / tau
        s = np.exp(logits) / np.exp(logits).sum()
        expected += (t * np.log(t / s)).sum()
    assert float(value) == pytest.approx(expected / 2, rel=1e-5)


def test_dual_teacher_hard_target_term_equals_hand_computed_cross_entropy():
    q = _emb([[1.0, 0.0], [0.0, 1.0]])
    pos, neg = _emb([[1.0, 0.0], [0.6, 0.8]]), _emb([[0.0, 1.0], [1.0, 0.0]])
    inbatch = _emb([[0.9, 0.1, 0.2, 0.8], [0.1, 0.9, 0.8, 0.2]])
    inbatch[1, 3] = float("-inf")                               # query 2's own source n2: left out
    labels = torch.cat([_emb([[1.0, 0.0], [0.2, 0.4]]), inbatch], dim=1)
    tau = 0.5
    plain = DualTeacherLoss(model=None, inbatch_weight=0.5, student_temperature=tau, teacher_temperature=0.25)
    hinton = build_loss("dual", None, inbatch_weight=0.5, inbatch_temperature=tau, inbatch_teacher_temperature=0.25,
                        label_weight=2.0)   # the hard targets at the *student's* temperature
    docs = np.array([[1, 0], [0.6, 0.8], [0, 1], [1, 0]])
    logits = np.array([[1, 0], [0, 1]]) @ docs.T / tau
    ce = [-(logits[0, 0] - math.log(np.exp(logits[0]).sum())),
          -(logits[1, 1] - math.log(np.exp(logits[1, :3]).sum()))]  # over p1, p2, n1 only
    assert float(inbatch_hard(q, torch.cat([pos, neg]), inbatch, tau)) == pytest.approx(sum(ce) / 2, rel=1e-5)
    extra = hinton.compute_loss_from_embeddings([q, pos, neg], labels) - \
        plain.compute_loss_from_embeddings([q, pos, neg], labels)
    assert float(extra) == pytest.approx(2.0 * sum(ce) / 2, rel=1e-5)


def test_label_weight_needs_the_dual_loss():
    from retrieval_kd.students import load_config
    from retrieval_kd.students.config import ConfigError

    assert load_config({}, {"loss.name": "dual", "loss.label_weight": 0.5}).loss.label_weight == 0.5
    with pytest.raises(ConfigError, match="label_weight is a term of the dual loss"):
        load_config({}, {"loss.name": "margin-mse", "loss.label_weight": 1.0})
    with pytest.raises(ConfigError, match="label_weight must be a number >= 0"):
        load_config({}, {"loss.name": "dual", "loss.label_weight": "heavy"})
    with pytest.raises(ConfigError, match="label_weight must be a number >= 0"):
        load_config({}, {"loss.name": "dual", "loss.label_weight": float("nan")})


def test_mnrl_baseline_equals_hand_computed_value():
    q, p, n = _emb([[1.0, 0.0], [0.0, 1.0]]), _emb([[1.0, 0.0], [0.6, 0.8]]), _emb([[0.0, 1.0], [1.0, 0.0]])
    loss = build_loss("mnrl", model=None, mnrl_scale=1.0)
    value = loss.compute_loss_from_embeddings([q, p, n], labels=None)
    # cosine scores of each query against [p1, p2, n1, n2]; cross-entropy with the own positive as target
    docs = np.array([[1, 0], [0.6, 0.8], [0, 1], [1, 0]])
    scores = np.array([[1, 0], [0, 1]]) @ docs.T
    ce = [-(scores[i, i] - math.log(np.exp(scores[i]).sum())) for i in range(2)]
    assert float(value) == pytest.approx(np.mean(ce), rel=1e-5)


# ----------------------------------------------------------------------------------------------------- sampler
class _Rows:
    """The three columns the sampler reads, like a datasets.Dataset."""

    def __init__(self, qids, sp, sn):
        self._cols = {"query_id": qids, "score_positive": sp, "score_negative": sn}
        self.column_names = list(self._cols)

    def __getitem__(self, key):
        return self._cols[key]

    def __len__(self):
        return len(self._cols["query_id"])


def _pair_rows(n_queries=40, pairs_per_query=50, seed=0):
    rng = np.random.default_rng(seed)
    qids, sp, sn = [], [], []
    for q in range(n_queries):
        # skewed margins: most pairs easy (large margin), few hard: balancing must flatten this
        margins = np.concatenate([rng.uniform(0.9, 1.0, pairs_per_query - 5), rng.uniform(0.0, 0.9, 5)])
        for m in margins:
            qids.append(f"q{q}")
            sp.append(1.0)
            sn.append(1.0 - m)
    return _Rows(qids, sp, sn)


def test_batches_share_a_cluster_and_every_query_is_used_once_per_epoch():
    rows = _pair_rows()
    clusters = {f"q{q}": q % 4 for q in range(40)}
    sampler = tas_sampler("tas-balanced", clusters, n_bins=10)(rows, batch_size=4, drop_last=False, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 12          # 4 clusters of 10 queries -> 3 batches each
        seen = [rows["query_id"][i] for b in batches for i in b]
        assert sorted(seen) == sorted(clusters)              # every query exactly once
        for b in batches:
            assert len({clusters[rows["query_id"][i]] for i in b}) == 1
    sampler.set_epoch(0)
    again = tas_sampler("tas-balanced", clusters, n_bins=10)(rows, batch_size=4, drop_last=False, seed=3)
    assert list(again) == list(sampler)                      # deterministic: same seed and epoch, same batches
    sampler.set_epoch(1)
    assert list(again) != list(sampler)


def test_balanced_margins_are_uniform_over_bins_and_random_is_not():
    rows = _pair_rows(n_queries=8)
    margins = np.asarray(rows["score_positive"]) - np.asarray(rows["score_negative"])
    q0 = np.flatnonzero(np.asarray(rows["query_id"]) == "q0")
    bins = margin_bins(margins[q0], 10)
    bin_of = {int(q0[i]): b for b, members in enumerate(bins) for i in members}
    counts = {}
    for kind in ("tas-balanced", "topic"):
        sampler = tas_sampler(kind, {f"q{q}": 0 for q in range(8)}, n_bins=10)(rows, batch_size=8, drop_last=False)
        c = Counter()
        for epoch in range(4000):
            sampler.set_epoch(epoch)
            for batch in sampler:
                c.update(bin_of[i] for i in batch if i in bin_of)
        counts[kind] = np.array([c[b] for b in range(len(bins))])
    expected = 4000 / len(bins)
    assert np.all(np.abs(counts["tas-balanced"] - expected) < 0.15 * expected)   # uniform over non-empty bins
    # unbalanced: the easy pairs (90% of a query's pairs, in the top bins) dominate
    assert counts["topic"][-2:].sum() > 0.8 * 4000 > 2 * counts["tas-balanced"][-2:].sum()


def test_random_sampler_mixes_clusters_and_topic_needs_clusters():
    rows = _pair_rows()
    clusters = {f"q{q}": q % 4 for q in range(40)}
    random_batches = list(tas_sampler("random")(rows, batch_size=8, drop_last=False, seed=3))
    topic_batches = list(tas_sampler("topic", clusters)(rows, batch_size=8, drop_last=False, seed=3))
    assert len(random_batches) == 5  # 40 queries, one pair each, 8 per batch
    for batches in (random_batches, topic_batches):  # every query exactly once per epoch
        assert sorted(rows["query_id"][i] for b in batches for i in b) == sorted(clusters)
    spread = [len({clusters[rows["query_id"][i]] for i in b}) for b in random_batches]
    assert min(spread) >= 2 and np.mean(spread) > 3  # 8 queries drawn from 4 clusters: mixed
    assert all(len({clusters[rows["query_id"][i]] for i in b}) == 1 for b in topic_batches)  # topic: never mixed
    with pytest.raises(ValueError, match="needs query clusters"):
        tas_sampler("topic")
    with pytest.raises(ValueError, match="unknown sampler"):
        tas_sampler("balanced")
    with pytest.raises(KeyError, match="have no cluster"):
        TASBalancedBatchSampler(rows, 4, clusters={"q0": 0})


# ------------------------------------------------------------------------------------------------- training
def test_config_rejects_unknown_keys_with_file_and_key(tmp_path):
    from retrieval_kd.students import load_config

    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nloss: {name: margin-mse, tempreature: 2}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: loss: unknown key\(s\) \['tempreature'\]"):
        load_config(path)
    path.write_text("sampler: {kind: clusters}\n")
    with pytest.raises(ValueError, match="sampler.kind 'clusters'"):
        load_config(path)
    assert load_config({"training": {"learning_rate": "2e-5"}}, {"loss.kl_temperature": "1e-1"}).training == \
        {"learning_rate": 2e-5}                                  # YAML 1.1 reads 2e-5 as a string
    assert load_config({}, {"loss.kl_temperature": "1e-1"}).loss.kl_temperature == 0.1
    with pytest.raises(ValueError, match="training.not_an_arg is not a trainer argument"):  # when read, not trained
        load_config({"training": {"num_train_epochs": 1, "not_an_arg": 3}})


@pytest.mark.parametrize("loss", ["margin-mse", "dual"])
def test_tiny_end_to_end_lowers_the_loss_and_saves_a_plain_sentence_transformer(tiny_distill, loss):
    from sentence_transformers import SentenceTransformer

    from retrieval_kd.students import load_config, train_dense

    config = load_config(tiny_distill, {"loss.name": loss, "training.max_steps": 40, "training.learning_rate": 5e-3})
    summary = train_dense(config)
    assert summary["steps"] == 40 and len([h for h in summary["log_history"] if "loss" in h]) == 40

    def margin_mse(model_path):
        """The Margin-MSE of a model over every teacher-scored pair (fixed set, unlike the sampled batches)."""
        from retrieval_kd.data import load_collection
        from retrieval_kd.students.data import pair_dataset
        from retrieval_kd.teachers.store import resolve_teacher_scores

        c = load_collection(config.data.dataset)
        _, run = resolve_teacher_scores(config.data.store, "ensemble", c.qrels("train"))
        ds = pair_dataset(run, c.qrels("train"), c, max_negatives=5)
        m = SentenceTransformer(str(model_path))
        q, p, n = (m.encode(list(ds[col]), convert_to_tensor=True) for col in ("query", "positive", "negative"))
        labels = torch.tensor([list(ds["score_positive"]), list(ds["score_negative"])]).T
        return float(build_loss("margin-mse", m).compute_loss_from_embeddings([q, p, n], labels))

    if loss == "margin-mse":   # the dual teacher also pulls towards the in-batch teacher: no such bound for it
        before, after = margin_mse(config.model), margin_mse(config.output_dir)
        assert after < 0.7 * before, (before, after)
    model = SentenceTransformer(config.output_dir)            # nothing from this project needed to load it
    assert model.encode(["fish pond"]).shape == (1, 16)
    card = (ROOT / config.output_dir / "README.md").read_text() if not os.path.isabs(config.output_dir) else \
        open(os.path.join(config.output_dir, "README.md")).read()
    assert "Distillation (retrieval-kd)" in card and "ensemble-test" in card


def test_resume_from_checkpoint_ends_with_the_same_weights(tiny_distill, tmp_path):
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from retrieval_kd.students import load_config, train_dense

    steps = {"training.max_steps": 6, "training.save_strategy": "steps", "training.save_steps": 3}
    full = load_config(tiny_distill, {**steps, "output_dir": str(tmp_path / "full")})
    train_dense(full)

    class Kill(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise KeyboardInterrupt("killed")

    cut = load_config(tiny_distill, {**steps, "output_dir": str(tmp_path / "cut")})
    with pytest.raises(KeyboardInterrupt):
        train_dense(cut, callbacks=[Kill()])
    assert (tmp_path / "cut-checkpoints" / "checkpoint-3").is_dir() and not (tmp_path / "cut").exists()
    summary = train_dense(cut)                                # resume: auto -> checkpoint-3
    assert summary["resumed_from"].endswith("checkpoint-3")
    a = load_file(str(next((tmp_path / "full").rglob("model.safetensors"))))
    b = load_file(str(next((tmp_path / "cut").rglob("model.safetensors"))))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_torchrun_two_processes_train_and_save_a_loadable_model(tiny_distill, tmp_path):
    import yaml
    from sentence_transformers import SentenceTransformer

    config = dict(tiny_distill, output_dir=str(tmp_path / "ddp"))
    config["training"] = dict(config["training"], max_steps=4, ddp_backend="gloo")
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "retrieval_kd.cli.main", "-q", "train", "dense", "--config", str(path)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = SentenceTransformer(str(tmp_path / "ddp"))
    assert model.encode(["goldfish"]).shape == (1, 16)
    import json

    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4


# ------------------------------------------------------------------------------------------------------ precision
def _bf16_config(tiny_distill, tmp_path, name):
    from retrieval_kd.students import load_config

    training = {k: v for k, v in tiny_distill["training"].items() if k != "use_cpu"}  # the trainer refuses bf16
    return load_config({**tiny_distill, "output_dir": str(tmp_path / name),  # on a CPU without use_cpu
                        "training": {**training, "max_steps": 2, "bf16": True}})


def test_bf16_training_runs_on_a_cpu_with_bf16_instructions(tiny_distill, tmp_path):
    from sentence_transformers import SentenceTransformer

    from retrieval_kd.encoders.backends import isa_target
    from retrieval_kd.students import train_dense

    if isa_target("torch-bf16") == "bf16-emulated":
        pytest.skip("this CPU has no bf16 instructions (AMX or AVX-512 BF16)")
    summary = train_dense(_bf16_config(tiny_distill, tmp_path, "bf16"))
    assert summary["steps"] == 2 and summary["precision"] == "bf16" and math.isfinite(summary["train_loss"])
    model = SentenceTransformer(str(tmp_path / "bf16"))                # fp32 weights, autocast only
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_bf16_training_falls_back_to_fp32_on_a_cpu_without_bf16(tiny_distill, tmp_path, monkeypatch, caplog):
    from retrieval_kd.encoders import backends
    from retrieval_kd.students import load_sparse_config, train_dense
    from retrieval_kd.students.dense import cpu_precision

    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))   # no amx_bf16/avx512_bf16
    config = _bf16_config(tiny_distill, tmp_path, "fp32")
    config.training["use_cpu"] = True
    sparse = load_sparse_config({"training": {"bf16": True, "bf16_full_eval": True, "use_cpu": True}})
    assert cpu_precision(sparse) == {"bf16": False, "bf16_full_eval": False}     # the sparse trainer's helper too
    with caplog.at_level(logging.WARNING, logger="retrieval_kd.students.dense"):
        summary = train_dense(config)
    assert summary["steps"] == 2 and summary["precision"] == "fp32"
    assert "no bf16 instructions" in caplog.text and "training in fp32" in caplog.text
