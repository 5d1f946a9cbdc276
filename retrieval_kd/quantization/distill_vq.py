"""Distill-VQ: learn IVF centroids and PQ codebooks (and optionally an OPQ rotation) by distilling the dense
model's relevance, instead of minimising reconstruction error.

For each training query: candidates are the dense teacher's top-k, plus in-list negatives (documents of the
IVF lists that hold the teacher's best documents) and random negatives. The teacher relevance is ``q . d``
(or scores passed in, e.g. from the score store); the student relevance is ``q . reconstruct(d)`` through the
quantised index, and ``q . C[list(d)]`` for the coarse quantiser (the IVF term). A listwise KL loss (ListNet,
as in the paper) or Margin-MSE compares them. Labels are not needed: unlabeled queries, or pseudo-queries
sampled from the corpus, train it as well (the paper's finding).

Model selection without labels: with ``holdout`` > 0 that share of the training queries is kept out of training,
and after every epoch (and before the first, i.e. the FAISS initialisation) the index's Recall@10 of the exact
top-10 on them is measured at ``holdout_nprobe``; the best epoch's parameters are kept. Distill-VQ then never
ends below its own initialisation on held-out queries.

Assignments (lists and codes) are hard. By default they are fixed after the FAISS initialisation (as JPQ does,
Zhan et al. 2021): gradients reach the selected codewords and centroids through the reconstruction, and the
exported index stores exactly the codes the loss was optimised for. ``reassign=True`` re-encodes every vector
by FAISS's nearest-codeword rule at each epoch instead.

Resuming: given a ``checkpoint_dir``, every epoch ends with a checkpoint there
(:mod:`retrieval_kd.quantization.checkpoint`), and a run with the same config and embeddings starts from the
newest one: a run killed in epoch 5 redoes epoch 5 only, and ends with the parameters, codes and history of an
uninterrupted run, bit for bit (same thread count). The checkpoints are kept after training, since the caller has
not saved its result yet; ``rkd vq train`` removes them once its output folder is in place.

References:
    Xiao, S., et al. (2022). Distill-VQ: Learning Retrieval Oriented Vector Quantization By Distilling
    Knowledge from Dense Embeddings. SIGIR.
    Zhan, J., et al. (2021). Jointly Optimizing Query Encoder and Product Quantization to Improve Retrieval
    Performance (JPQ). CIKM.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from retrieval_kd.quantization.checkpoint import TrainingState, load_checkpoint, run_key, save_checkpoint
from retrieval_kd.quantization.learnable_ivfpq import LearnableIVFPQ
from retrieval_kd.quantization.losses import ListwiseDistillLoss, MarginMSEDistillLoss

logger = logging.getLogger(__name__)

__all__ = ["DistillVQConfig", "DistillVQResult", "train_distill_vq", "exact_topk"]


@dataclass
class DistillVQConfig:
    """Hyperparameters of Distill-VQ training (defaults tuned on SciFact train with all-MiniLM-L6-v2)."""

    nlist: int = 64
    m: int = 48
    nbits: int = 8
    opq: bool = False
    metric: str = "ip"
    loss: str = "listnet"  # or "margin-mse"
    temperature: float = 0.05
    ivf_weight: float = 1.0
    top_k: int = 100
    n_inlist: int = 50
    n_random: int = 100
    batch_size: int = 32
    epochs: int = 8
    lr: float = 1e-3
    lr_rotation: float = 1e-4
    pseudo_queries: int = 0
    reassign: bool = False
    holdout: float = 0.0
    holdout_nprobe: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        from retrieval_kd.errors import ConfigError

        if not 0 <= self.holdout < 1:
            raise ConfigError(f"distill_vq.holdout={self.holdout!r}: the share of training queries held out must be "
                              "in [0, 1)")
        if self.epochs < 1:
            raise ConfigError(f"distill_vq.epochs={self.epochs!r}: must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DistillVQResult:
    module: LearnableIVFPQ
    lists: np.ndarray
    codes: np.ndarray
    history: list[dict] = field(default_factory=list)


def exact_topk(queries: np.ndarray, docs: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k (FAISS ``IndexFlatIP``), query chunk by query chunk."""
    import faiss

    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(np.ascontiguousarray(docs, dtype=np.float32))
    scores, ids = [], []
    for i in range(0, len(queries), chunk):
        s, r = index.search(np.ascontiguousarray(queries[i:i + chunk], dtype=np.float32), k)
        scores.append(s)
        ids.append(r)
    return np.concatenate(scores), np.concatenate(ids)


def _candidates(rng: np.random.Generator, top: np.ndarray, lists: np.ndarray, members: list[np.ndarray],
                n_docs: int, n_inlist: int, n_random: int) -> np.ndarray:
    """Teacher top-k, then in-list negatives (from the lists of the top-10), then random negatives; unique."""
    chosen = list(top)
    seen = set(chosen)
    pool = np.concatenate([members[a] for a in np.unique(lists[top[:10]])])
    for d in rng.permutation(pool)[: n_inlist * 2]:
        if len(chosen) >= len(top) + n_inlist:
            break
        if d not in seen:
            chosen.append(int(d))
            seen.add(int(d))
    for d in rng.integers(0, n_docs, size=n_random * 2):
        if len(chosen) >= len(top) + n_inlist + n_random:
            break
        if d not in seen:
            chosen.append(int(d))
            seen.add(int(d))
    return np.asarray(chosen, dtype=np.int64)


def train_distill_vq(docs: np.ndarray, queries: np.ndarray, config: DistillVQConfig | None = None,
                     module: LearnableIVFPQ | None = None, teacher_fn=None, show_progress: bool = False,
                     checkpoint_dir: str | os.PathLike | None = None,
                     checkpoint_key: dict | None = None) -> DistillVQResult:
    """Train a learnable IVF-PQ on ``docs`` by distilling relevance for ``queries``.

    Args:
        docs: ``(n, d)`` document embeddings (the dense model's).
        queries: ``(nq, d)`` training query embeddings (labelled or not); ``config.pseudo_queries`` adds that
            many sampled documents as pseudo-queries.
        module: an initialised module (default: FAISS-trained on ``docs``).
        teacher_fn: ``f(query_rows, doc_rows) -> (b, n) scores`` to distil other teachers' scores; default ``q . d``.
        checkpoint_dir: write a checkpoint there after every epoch and resume from the newest one of the same run
            (config, embeddings, initial module, ``checkpoint_key``); locked while training, so a second run on
            the same folder fails at once (:class:`~retrieval_kd.errors.LockedError`).
        checkpoint_key: what else the run depends on, for the checkpoints' key: with a ``teacher_fn``, name its
            scores (e.g. the score store's teacher fingerprint), or a resumed run may mix two teachers.
    """
    from retrieval_kd.utils.fs import file_lock

    with contextlib.ExitStack() as stack:
        if checkpoint_dir is not None:
            stack.enter_context(file_lock(checkpoint_dir, what="Distill-VQ checkpoints"))
        return _train(docs, queries, config or DistillVQConfig(), module, teacher_fn, checkpoint_dir,
                      checkpoint_key)


def _train(docs, queries, cfg: DistillVQConfig, module, teacher_fn, checkpoint_dir, checkpoint_key) -> DistillVQResult:
    from retrieval_kd.utils.progress import progress

    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    docs = np.array(docs, dtype=np.float32)  # a writable copy (inputs may be memory-mapped caches)
    queries = np.array(queries, dtype=np.float32)
    key = resumed = None
    if checkpoint_dir is not None:
        extra = dict(checkpoint_key or {})
        if teacher_fn is not None:
            extra["teacher_fn"] = f"{getattr(teacher_fn, '__module__', '')}.{getattr(teacher_fn, '__qualname__', '')}"
        key = run_key(cfg.to_dict(), docs, queries, module, extra)
        resumed = load_checkpoint(checkpoint_dir, key)
    if cfg.pseudo_queries:
        pick = rng.choice(len(docs), size=min(cfg.pseudo_queries, len(docs)), replace=False)
        queries = np.concatenate([queries, docs[pick]])
    if module is None and resumed is not None:  # its parameters come from the checkpoint
        module = LearnableIVFPQ(docs.shape[1], cfg.nlist, cfg.m, cfg.nbits, cfg.opq, cfg.metric)
    elif module is None:
        module = LearnableIVFPQ.from_faiss_training(docs, cfg.nlist, cfg.m, cfg.nbits, cfg.opq, cfg.metric,
                                                    seed=cfg.seed)
    held = np.zeros((0, docs.shape[1]), dtype=np.float32)
    if cfg.holdout > 0:
        order = rng.permutation(len(queries))
        n_held = max(1, int(round(cfg.holdout * len(queries))))
        held, queries = queries[order[:n_held]], queries[order[n_held:]]
    _, top = exact_topk(queries, docs, min(cfg.top_k, len(docs)))
    d_t, q_t = torch.from_numpy(docs), torch.from_numpy(queries)
    if cfg.loss not in ("listnet", "margin-mse"):
        raise ValueError(f"unknown Distill-VQ loss {cfg.loss!r}; use listnet or margin-mse")
    loss_fn = ListwiseDistillLoss(cfg.temperature) if cfg.loss == "listnet" else MarginMSEDistillLoss()
    groups = [{"params": [module.codebooks], "lr": cfg.lr}]
    if module.nlist:
        groups.append({"params": [module.centroids], "lr": cfg.lr})
    if module.use_opq:
        groups.append({"params": list(module.rotation.parameters()), "lr": cfg.lr_rotation})
    optim = torch.optim.Adam(groups)
    history, best, first = [], None, 0
    if resumed is not None:
        module.load_state_dict(resumed.module)
        state = optim.state_dict()
        state["state"] = resumed.optimizer
        optim.load_state_dict(state)
        lists_t, codes_t = resumed.lists, resumed.codes
        history, best, first = resumed.history, resumed.best, resumed.epoch
        rng.bit_generator.state = resumed.numpy_rng
        torch.set_rng_state(resumed.torch_rng)
    else:
        lists_t, codes_t = module.encode(d_t)  # hard assignments by FAISS's rules
    if len(held):
        _, held_top = exact_topk(held, docs, 10)
        held_t = torch.from_numpy(held)

        def held_recall() -> float:
            _, found = module.search(held_t, lists_t, codes_t, 10, cfg.holdout_nprobe)
            return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.numpy(), held_top)]))

        if resumed is None:
            best = (held_recall(), 0, copy.deepcopy(module.state_dict()))
            history.append({"epoch": 0, "heldout_recall@10": best[0]})
    for epoch in range(first, cfg.epochs):
        if cfg.reassign and epoch:
            lists_t, codes_t = module.encode(d_t)
        lists = lists_t.numpy()
        members = [np.flatnonzero(lists == a) for a in range(max(module.nlist, 1))]
        order = rng.permutation(len(queries))
        total, steps = 0.0, 0
        for start in progress(range(0, len(order), cfg.batch_size), desc=f"distill-vq epoch {epoch + 1}"):
            rows = order[start:start + cfg.batch_size]
            cands = [_candidates(rng, top[r], lists, members, len(docs), cfg.n_inlist, cfg.n_random) for r in rows]
            width = max(len(c) for c in cands)
            idx = torch.tensor(np.stack([np.pad(c, (0, width - len(c)), constant_values=c[0]) for c in cands]))
            mask = torch.tensor(np.stack([np.arange(width) < len(c) for c in cands]))
            q = q_t[rows]
            with torch.no_grad():
                teacher = (teacher_fn(rows, idx.numpy()) if teacher_fn is not None
                           else torch.einsum("bd,bnd->bn", q, d_t[idx]))
                teacher = torch.as_tensor(teacher, dtype=torch.float32)
            flat = idx.reshape(-1)
            recon = module.reconstruct(lists_t[flat], codes_t[flat]).reshape(len(rows), width, -1)
            qr = module.rotate(q)
            student = torch.einsum("bd,bnd->bn", qr, recon)
            loss = loss_fn(student, teacher, mask)
            if module.nlist and cfg.ivf_weight:
                coarse = torch.einsum("bd,bnd->bn", qr, module.centroids[lists_t[flat]].reshape(len(rows), width, -1))
                loss = loss + cfg.ivf_weight * loss_fn(coarse, teacher, mask)
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += loss.item()
            steps += 1
        history.append({"epoch": epoch + 1, "loss": total / max(steps, 1)})
        if best is not None:
            if cfg.reassign:
                lists_t, codes_t = module.encode(d_t)
            history[-1]["heldout_recall@10"] = recall = held_recall()
            if recall > best[0]:
                best = (recall, epoch + 1, copy.deepcopy(module.state_dict()))
        logger.info("distill-vq epoch %d: %s", epoch + 1, history[-1])
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, key, TrainingState(
                epoch + 1, module.state_dict(), optim.state_dict()["state"], lists_t, codes_t, history, best,
                rng.bit_generator.state, torch.get_rng_state()),
                code_dtype=torch.uint8 if module.ksub <= 256 else torch.int32)
    if best is not None:
        module.load_state_dict(best[2])
        history.append({"selected_epoch": best[1], "heldout_recall@10": best[0]})
        logger.info("distill-vq: kept epoch %d (held-out Recall@10 %.4f)", best[1], best[0])
    if cfg.reassign:
        lists_t, codes_t = module.encode(d_t)
    return DistillVQResult(module, lists_t.numpy(), codes_t.numpy(), history)
