"""Distill-VQ: FAISS export reproduces the torch index exactly; code-size arithmetic; losses; training helps."""

from __future__ import annotations

import logging
import math

import faiss
import numpy as np
import pytest
import torch

from retrieval_kd.index import export_faiss, to_gpu
from retrieval_kd.quantization import (
    DistillVQConfig,
    LearnableIVFPQ,
    ListwiseDistillLoss,
    MarginMSEDistillLoss,
    exact_topk,
    train_distill_vq,
)


def clustered(n: int, d: int, n_clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, d))
    x = centers[rng.integers(0, n_clusters, n)] + 0.6 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    docs = clustered(3000, 32, 20, seed=0)
    rng = np.random.default_rng(1)
    queries = docs[rng.choice(len(docs), 200, replace=False)] + 0.3 * rng.normal(size=(200, 32)).astype(np.float32)
    return docs, (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("nlist,opq", [(16, False), (0, False), (16, True)])
def test_faiss_export_returns_the_torch_topk(data, nlist, opq, tmp_path):
    docs, queries = data
    module = LearnableIVFPQ.from_faiss_training(docs, nlist=nlist, m=8, opq=opq)
    lists, codes = module.encode(torch.from_numpy(docs))
    index = export_faiss(module, lists=lists.numpy(), codes=codes.numpy())
    expected = {0: "IndexPQ", 16: "IndexIVFPQ"}[nlist]
    inner = faiss.downcast_index(index.index) if opq else index
    assert type(faiss.downcast_index(inner)).__name__ == expected
    if opq:
        assert isinstance(index, faiss.IndexPreTransform)
    nprobe = 4 if nlist else None
    if nlist:
        faiss.extract_index_ivf(index).nprobe = nprobe
    f_scores, f_ids = index.search(queries, 10)
    t_scores, t_ids = module.search(torch.from_numpy(queries), lists, codes, 10, nprobe=nprobe)
    assert np.array_equal(f_ids, t_ids.numpy())
    assert np.allclose(f_scores, t_scores.numpy(), atol=1e-4)
    # a saved index is an ordinary FAISS file
    faiss.write_index(index, str(tmp_path / "x.faiss"))
    again = faiss.read_index(str(tmp_path / "x.faiss"))
    if nlist:
        faiss.extract_index_ivf(again).nprobe = nprobe
    assert np.array_equal(again.search(queries, 10)[1], f_ids)


def test_faiss_add_encodes_like_the_module(data):
    docs, _ = data
    module = LearnableIVFPQ.from_faiss_training(docs, nlist=16, m=8)
    lists, codes = module.encode(torch.from_numpy(docs))
    index = export_faiss(module, lists=lists.numpy(), codes=codes.numpy())
    faiss_codes = index.sa_encode(docs)
    ours = np.concatenate([lists.numpy()[:, None].astype(np.uint8), codes.numpy().astype(np.uint8)], axis=1)
    assert (faiss_codes == ours).all(axis=1).mean() > 0.999


def test_code_size_and_compression():
    for m, ratio in ((48, 32), (16, 96)):
        module = LearnableIVFPQ(384, nlist=64, m=m)
        assert module.bytes_per_vector == m
        assert 384 * 4 / module.bytes_per_vector == ratio
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(384), 384, 64, 48, 8, faiss.METRIC_INNER_PRODUCT)
    assert index.code_size == 48
    with pytest.raises(ValueError, match="not divisible"):
        LearnableIVFPQ(384, nlist=8, m=10)


def test_listwise_loss_hand_computed():
    loss = ListwiseDistillLoss(temperature=1.0)(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    p_t = [1 / (1 + math.e), math.e / (1 + math.e)]
    log_p_s = [-math.log(1 + math.exp(-1)), -math.log(1 + math.e)]
    expected = sum(p * (math.log(p) - lq) for p, lq in zip(p_t, log_p_s))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.462117, abs=1e-6)
    # temperature sharpens both distributions; equal scores give zero loss
    assert ListwiseDistillLoss(0.5)(torch.tensor([[2.0, 1.0]]), torch.tensor([[2.0, 1.0]])).item() == pytest.approx(0)
    masked = ListwiseDistillLoss()(torch.tensor([[1.0, 0.0, 9.0]]), torch.tensor([[0.0, 1.0, -9.0]]),
                                   torch.tensor([[True, True, False]]))
    assert masked.item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="must both be"):
        ListwiseDistillLoss()(torch.zeros(2, 3), torch.zeros(2, 4))


def test_margin_mse_hand_computed():
    loss = MarginMSEDistillLoss()(torch.tensor([[3.0, 1.0, 2.0]]), torch.tensor([[2.0, 1.0, 1.0]]))
    assert loss.item() == pytest.approx(((2 - 1) ** 2 + (1 - 1) ** 2) / 2)


def test_training_lowers_loss_and_raises_recall():
    """Queries that look at a few directions (as real query distributions do): reconstruction-trained PQ spends
    its codewords evenly, distillation spends them where the ranking needs them."""
    rng = np.random.default_rng(0)
    d = 32
    docs = rng.normal(size=(3000, d)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    weight = np.full(d, 0.05, dtype=np.float32)
    weight[::8] = weight[1::8] = 1.0

    def make_queries(n):
        q = rng.normal(size=(n, d)).astype(np.float32) * weight
        return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)

    train_q, test_q = make_queries(1000), make_queries(200)
    _, truth = exact_topk(test_q, docs, 10)
    cfg = DistillVQConfig(nlist=8, m=4, epochs=4, top_k=50, n_inlist=20, n_random=100, batch_size=32, lr=1e-3,
                          temperature=0.05, seed=0)
    init = LearnableIVFPQ.from_faiss_training(docs, cfg.nlist, cfg.m, seed=0)

    def recall10(module, lists, codes):
        index = export_faiss(module, lists=lists, codes=codes)
        faiss.extract_index_ivf(index).nprobe = cfg.nlist
        _, got = index.search(test_q, 10)
        return np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth)])

    lists, codes = init.encode(torch.from_numpy(docs))
    before = recall10(init, lists.numpy(), codes.numpy())
    result = train_distill_vq(docs, train_q, cfg, module=init)
    after = recall10(result.module, result.lists, result.codes)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert after > before + 0.02, (before, after)


def test_gpu_fallback_is_loud(data, caplog):
    docs, _ = data
    module = LearnableIVFPQ.from_faiss_training(docs, nlist=8, m=8)
    index = export_faiss(module, docs)
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        gpu = to_gpu(index, strict=True)
        assert np.array_equal(gpu.search(docs[:20], 5)[1], index.search(docs[:20], 5)[1])
        return
    with caplog.at_level(logging.WARNING):
        assert to_gpu(index) is None
    assert "searching on CPU" in caplog.text
    with pytest.raises(RuntimeError, match="no GPU FAISS"):
        to_gpu(index, strict=True)


def test_heldout_selection_keeps_the_best_epoch_including_the_initialisation():
    """With a learning rate that wrecks the codebooks, held-out selection returns the FAISS initialisation
    unchanged; with a sane one it keeps a trained epoch whose held-out recall is the best seen."""
    rng = np.random.default_rng(1)
    docs = rng.normal(size=(2000, 16)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = docs[rng.choice(2000, 400, replace=False)] + 0.3 * rng.normal(size=(400, 16)).astype(np.float32)
    init = LearnableIVFPQ.from_faiss_training(docs, 8, 4, seed=0)
    start = init.codebooks.detach().clone()
    bad = DistillVQConfig(nlist=8, m=4, epochs=2, top_k=20, n_inlist=10, n_random=20, lr=5.0, holdout=0.2,
                          holdout_nprobe=8, seed=0)
    wrecked = train_distill_vq(docs, queries, bad, module=init)
    assert wrecked.history[-1]["selected_epoch"] == 0
    assert torch.equal(wrecked.module.codebooks, start)
    held = [h["heldout_recall@10"] for h in wrecked.history[:-1]]
    assert held[0] == max(held) and min(held[1:]) < held[0]

    good = DistillVQConfig(nlist=8, m=4, epochs=3, top_k=20, n_inlist=10, n_random=20, lr=1e-3, holdout=0.2,
                           holdout_nprobe=8, seed=0)
    trained = train_distill_vq(docs, queries, good, module=LearnableIVFPQ.from_faiss_training(docs, 8, 4, seed=0))
    chosen = trained.history[-1]
    recalls = [h["heldout_recall@10"] for h in trained.history[:-1]]
    assert chosen["heldout_recall@10"] == max(recalls) == recalls[chosen["selected_epoch"]]
