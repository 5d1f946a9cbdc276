"""FAISS-GPU round trip of the Distill-VQ exports: the GPU index returns what CPU FAISS and the torch module return.

Usage:
    python benchmarks/faiss_gpu.py make-pack PACK --index indexes/scifact-dvq48 [--index ...]   # here, CPU
    python benchmarks/faiss_gpu.py run PACK OUT        # on a machine with faiss-gpu and a GPU -> OUT/faiss_gpu.json

``make-pack`` copies index folders written by ``rkd vq train`` (FAISS file, doc ids, sidecar, the module's
safetensors) with the test query embeddings of each one's dataset, encoded by its encoder. ``run`` needs only
torch, numpy, safetensors, faiss-gpu and this package; for every index and nprobe it searches the top-100 three ways:

* the torch module (:meth:`LearnableIVFPQ.search`) over the (list, code) pairs read back from the FAISS file,
* the FAISS index on CPU,
* the same index cloned to the GPU with :func:`retrieval_kd.index.to_gpu` (``index_cpu_to_gpu``, float32 lookup
  tables),

and reports how many queries get identical ranked id lists, the mean top-k overlap, and the largest score
difference at equal rank. Rows whose ids differ but whose scores agree at every rank (within 1e-4) are ties
ordered differently, counted apart. The same is done on synthetic clustered vectors for IVFPQ, OPQ+IVFPQ and PQ
modules after a short Distill-VQ training, and for FAISS's own IVFPQ as a reference. Finally each index type that
:data:`~retrieval_kd.index.faiss_export.GPU_UNSUPPORTED` lists is handed to ``index_cpu_to_gpu`` directly, to
record that FAISS refuses it, and to :func:`to_gpu`, to record that it falls back with a warning.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ATOL = 1e-4


def make_pack(pack: Path, folders: list[Path], split: str) -> None:
    from retrieval_kd.data import load_collection
    from retrieval_kd.encoders import query_embeddings

    pack.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        meta = json.loads((folder / "rkd_index.json").read_text())
        if meta.get("type") != "distill-vq":
            raise ValueError(f"{folder}: not a Distill-VQ index folder (type {meta.get('type')!r})")
        dst = pack / folder.name
        shutil.copytree(folder, dst, dirs_exist_ok=True)
        queries = load_collection(meta["dataset"]).queries(split)
        emb = query_embeddings(meta["encoder"], queries)
        np.save(dst / "queries.npy", np.ascontiguousarray(emb, dtype=np.float32))
        (dst / "qids.json").write_text(json.dumps(list(queries)))


# -- helpers used on the GPU machine ----------------------------------------------------------------------------------
def stored_codes(index) -> tuple[np.ndarray, np.ndarray]:
    """``(lists, codes)`` of every stored vector, by id, read back from an IndexIVFPQ / IndexPQ (or its OPQ chain)."""
    import faiss

    from retrieval_kd.index.dense import inner_index

    inner = inner_index(index)
    n, cs = inner.ntotal, inner.code_size
    if isinstance(inner, faiss.IndexPQ):
        return np.zeros(n, dtype=np.int64), faiss.vector_to_array(inner.codes).reshape(n, cs).astype(np.int64)
    lists, codes = np.full(n, -1, dtype=np.int64), np.zeros((n, cs), dtype=np.int64)
    inv = inner.invlists
    for lst in range(inner.nlist):
        size = inv.list_size(lst)
        if not size:
            continue
        ids = faiss.rev_swig_ptr(inv.get_ids(lst), size).copy()
        raw = faiss.rev_swig_ptr(inv.get_codes(lst), size * cs).copy().reshape(size, cs)
        lists[ids], codes[ids] = lst, raw
    return lists, codes


def load_module(folder: Path, meta: dict):
    import torch
    from safetensors.torch import load_file

    from retrieval_kd.quantization import LearnableIVFPQ

    cfg = meta["config"]
    module = LearnableIVFPQ(meta["dim"], cfg["nlist"], cfg["m"], cfg.get("nbits", 8), opq=cfg.get("opq", False),
                            metric=cfg.get("metric", "ip"))
    module.load_state_dict(load_file(str(folder / "distill_vq.safetensors")))
    return module.to(torch.float32).eval()


def agreement(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> dict:
    """How far two ranked results ``(scores, ids)`` agree; missing entries (id -1) compare equal to each other."""
    (sa, ia), (sb, ib) = a, b
    ia, ib = ia.astype(np.int64), ib.astype(np.int64)
    missing = (ia < 0) & (ib < 0)
    same_ids = (ia == ib) | missing
    rows_equal = same_ids.all(axis=1)
    gap = np.where(missing | ~np.isfinite(sa) | ~np.isfinite(sb), 0.0, np.abs(sa - sb))
    gap = np.where((ia < 0) ^ (ib < 0), np.inf, gap)
    ties = (~rows_equal) & (gap <= ATOL).all(axis=1)
    k = ia.shape[1]
    overlap = np.mean([len(set(x[x >= 0]) & set(y[y >= 0])) / max(1, (x >= 0).sum()) for x, y in zip(ia, ib)])
    top10 = (same_ids[:, : min(10, k)]).all(axis=1)
    return {"queries": int(len(ia)), "identical_rows": int(rows_equal.sum()), "identical_top10": int(top10.sum()),
            "rows_differing_by_tie_order": int(ties.sum()),
            "rows_differing_otherwise": int((~rows_equal & ~ties).sum()),
            f"mean_overlap@{k}": round(float(overlap), 6),
            "max_abs_score_diff_same_rank": float(np.max(gap[np.isfinite(gap)], initial=0.0))}


def compare_index(index, module, queries: np.ndarray, nprobes: list[int], k: int = 100) -> dict:
    """Torch vs CPU FAISS vs GPU FAISS for one index, per nprobe."""
    import faiss
    import torch

    from retrieval_kd.index import to_gpu
    from retrieval_kd.index.dense import set_nprobe

    ivf = faiss.try_extract_index_ivf(index)
    nlist = ivf.nlist if ivf is not None else 0
    gpu = to_gpu(index, strict=True)
    lists, codes = stored_codes(index) if module is not None else (None, None)
    out = {}
    for nprobe in (nprobes if nlist else [None]):
        if nprobe is not None and nprobe > nlist:
            continue
        set_nprobe(index, nprobe)
        set_nprobe(gpu, nprobe)  # through GpuParameterSpace: a GPU clone is no IndexIVF
        t0 = time.perf_counter()
        cpu = index.search(queries, k)
        t_cpu = time.perf_counter() - t0
        gpu.search(queries[:8], k)  # warm-up
        t0 = time.perf_counter()
        g = gpu.search(queries, k)
        t_gpu = time.perf_counter() - t0
        row = {"gpu_vs_cpu": agreement(g, cpu), "cpu_ms_per_query": round(1e3 * t_cpu / len(queries), 4),
               "gpu_ms_per_query": round(1e3 * t_gpu / len(queries), 4)}
        if module is not None:
            ts, ti = module.search(torch.from_numpy(queries), torch.from_numpy(lists), torch.from_numpy(codes), k,
                                   nprobe=nprobe)
            t = (ts.numpy(), np.where(np.isfinite(ts.numpy()), ti.numpy(), -1))
            row["gpu_vs_torch"] = agreement(g, t)
            row["cpu_vs_torch"] = agreement(cpu, t)
        out[f"nprobe={nprobe}" if nprobe else "flat"] = row
    return out


def clustered(n: int, d: int, n_clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, d))
    x = centers[rng.integers(0, n_clusters, n)] + 0.6 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic(nprobes: list[int]) -> dict:
    """Short Distill-VQ trainings on clustered vectors, exported and compared; FAISS's own IVFPQ as reference."""
    import faiss

    from retrieval_kd.index import export_faiss
    from retrieval_kd.quantization import DistillVQConfig, LearnableIVFPQ, train_distill_vq

    d, n = 128, 20000
    docs = clustered(n, d, 50, seed=0)
    rng = np.random.default_rng(1)
    pick = rng.choice(n, 1500, replace=False)
    noisy = docs[pick] + 0.3 * rng.normal(size=(1500, d)).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    train_q, test_q = noisy[:1000], np.ascontiguousarray(noisy[1000:])
    out = {"vectors": n, "dim": d, "test_queries": len(test_q)}
    for name, nlist, m, opq in [("ivfpq_m16", 64, 16, False), ("ivfpq_m32", 64, 32, False),
                                ("opq_ivfpq_m16", 64, 16, True), ("pq_m16", 0, 16, False)]:
        cfg = DistillVQConfig(nlist=nlist, m=m, opq=opq, epochs=2, top_k=50, n_inlist=20, n_random=50, seed=0)
        module = LearnableIVFPQ.from_faiss_training(docs, nlist, m, opq=opq)
        result = train_distill_vq(docs, train_q, cfg, module=module)
        index = export_faiss(result.module, lists=result.lists, codes=result.codes)
        try:
            out[name] = compare_index(index, result.module.eval(), test_q, nprobes)
        except RuntimeError as exc:  # e.g. a type FAISS does not run on GPU: to_gpu(strict=True) says so
            out[name] = {"error": str(exc).strip()[-500:]}
    quantizer = faiss.IndexFlatIP(d)
    ref = faiss.IndexIVFPQ(quantizer, d, 64, 16, 8, faiss.METRIC_INNER_PRODUCT)
    ref.train(docs)
    ref.add(docs)
    out["faiss_ivfpq_m16_reference"] = compare_index(ref, None, test_q, nprobes)
    return out


def unsupported(d: int = 64) -> dict:
    """index_cpu_to_gpu on each type GPU_UNSUPPORTED names (expect FAISS to raise), and what to_gpu does instead."""
    import faiss

    from retrieval_kd.index import to_gpu
    from retrieval_kd.index.faiss_export import GPU_UNSUPPORTED

    x = clustered(2000, d, 10, seed=3)
    built = {"IndexPQ": faiss.IndexPQ(d, 8, 8, faiss.METRIC_INNER_PRODUCT),
             "IndexHNSWFlat": faiss.IndexHNSWFlat(d, 16, faiss.METRIC_INNER_PRODUCT)}
    out = {"GPU_UNSUPPORTED": list(GPU_UNSUPPORTED)}
    for name, index in built.items():
        index.train(x)
        index.add(x)
        res = faiss.StandardGpuResources()
        try:
            faiss.index_cpu_to_gpu(res, 0, index)
            direct = "cloned (FAISS accepted it)"
        except RuntimeError as exc:
            direct = "raised: " + str(exc).strip().splitlines()[-1][:200]
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("retrieval_kd.index.faiss_export").addHandler(handler)
        fallback = to_gpu(index)
        logging.getLogger("retrieval_kd.index.faiss_export").removeHandler(handler)
        out[name] = {"index_cpu_to_gpu": direct, "to_gpu_returned": None if fallback is None else type(fallback).__name__,
                     "to_gpu_warning": [r.getMessage() for r in records if r.levelno >= logging.WARNING]}
    return out


def run(pack: Path, out: Path, nprobes: list[int]) -> None:
    import faiss
    import torch

    from retrieval_kd.index.dense import load_index
    from retrieval_kd.utils.hardware import hardware_info

    out.mkdir(parents=True, exist_ok=True)
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        raise SystemExit("no GPU FAISS here: install faiss-gpu on a machine with a GPU")
    info = hardware_info(("retrieval-kd", "torch", "faiss-gpu", "faiss-gpu-cu12", "faiss-cpu", "numpy"))
    info.update(faiss_version=faiss.__version__, faiss_gpus=faiss.get_num_gpus(), torch_cuda=torch.version.cuda,
                # benchmarks/device/faiss_gpu.sh sets this when its shim stands in for cuBLAS 12
                cublas=os.environ.get("RKD_CUBLAS13", "libcublas.so.12"))
    results = {"command": "python benchmarks/faiss_gpu.py " + " ".join(sys.argv[1:]), "hardware": info, "k": 100,
               "indexes": {}}
    for folder in sorted(p for p in pack.iterdir() if (p / "rkd_index.json").exists()):
        index, doc_ids, meta = load_index(folder)
        queries = np.load(folder / "queries.npy")
        logging.info("%s: %d vectors, %d queries", folder.name, index.ntotal, len(queries))
        row = {"dataset": meta["dataset"], "encoder": meta["encoder"], "ntotal": int(index.ntotal),
               "config": {k: meta["config"][k] for k in ("nlist", "m", "opq")}}
        try:
            row.update(compare_index(index, load_module(folder, meta), queries, nprobes))
        except RuntimeError as exc:  # keep the other indexes' results when FAISS refuses one
            row["error"] = str(exc).strip()[-500:]
        results["indexes"][folder.name] = row
    results["synthetic"] = synthetic(nprobes)
    results["unsupported"] = unsupported()
    (out / "faiss_gpu.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    mp = sub.add_parser("make-pack")
    mp.add_argument("pack", type=Path)
    mp.add_argument("--index", type=Path, action="append", required=True)
    mp.add_argument("--split", default="test")
    rp = sub.add_parser("run")
    rp.add_argument("pack", type=Path)
    rp.add_argument("out", type=Path)
    rp.add_argument("--nprobe", type=int, nargs="+", default=[1, 8, 64])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.cmd == "make-pack":
        make_pack(args.pack, args.index, args.split)
    else:
        run(args.pack, args.out, args.nprobe)


if __name__ == "__main__":
    main()
