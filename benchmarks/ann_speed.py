"""Speed sweep on a synthetic set of >= 1M vectors: queries/s against Recall@10 for nprobe in 1, 2, 4, ..., 128.

Usage: python benchmarks/ann_speed.py [--n 1000000] [--dim 384] [--m 16] [--nlist 1024] [--threads 1]

Data: ``n`` unit vectors around 4,096 Gaussian cluster centres (noise 0.35 per dimension) (a stand-in for sentence embeddings), 1,000
held-out queries near them; ground truth is exact inner-product top-10 (``IndexFlatIP``). Indexes, all with the
same code size (``m`` bytes/vector) and ``nlist``: FAISS ``IVFn,PQm``, ``OPQm,IVFn,PQm`` and the Distill-VQ export
(trained on a 50k sample with pseudo-queries, then encoding all ``n`` vectors), plus exact flat search and
HNSW32 (efSearch sweep) for reference. Search runs single-threaded by default (FAISS benchs convention); one
warm-up search precedes each timing. The Distill-VQ export is a plain ``IndexIVFPQ``, so its speed ratio against
FAISS's IVFPQ at the same nprobe is the check that it "searches at the speed of the FAISS index of the same type".

Writes benchmarks/results/ann_speed.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from retrieval_kd.data.formats import atomic_write
from retrieval_kd.index import export_faiss
from retrieval_kd.index.dense import build_faiss_index, set_nprobe
from retrieval_kd.quantization import DistillVQConfig, LearnableIVFPQ, train_distill_vq
from retrieval_kd.utils.hardware import hardware_info

ROOT = Path(__file__).resolve().parents[1]


def synthetic(n: int, dim: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4096, dim)).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        end = min(n, start + 100_000)
        x[start:end] = centres[rng.integers(0, 4096, end - start)] + 0.35 * rng.normal(size=(end - start, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = centres[rng.integers(0, 4096, n_queries)] + 0.35 * rng.normal(size=(n_queries, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q.astype(np.float32)


def timed_search(index, q, k=10):
    index.search(q[:50], k)  # warm-up
    t0 = time.perf_counter()
    _, ids = index.search(q, k)
    return len(q) / (time.perf_counter() - t0), ids


def recall_at_10(ids, truth):
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--train-sample", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-hnsw", action="store_true")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "ann_speed.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)

    x, q = synthetic(args.n, args.dim, args.queries)
    rng = np.random.default_rng(1)
    sample = x[rng.choice(args.n, args.train_sample, replace=False)]
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(x)
    flat_qps, truth = timed_search(flat, q)
    logging.info("flat: %.1f q/s", flat_qps)
    out = {"n": args.n, "dim": args.dim, "m": args.m, "nlist": args.nlist, "threads": args.threads,
           "queries": args.queries, "flat_qps": round(flat_qps, 1), "indexes": {}, "build_seconds": {}}

    indexes = {}
    for kind in ("ivfpq", "opq-ivfpq"):
        t0 = time.perf_counter()
        factory = f"IVF{args.nlist},PQ{args.m}" if kind == "ivfpq" else f"OPQ{args.m},IVF{args.nlist},PQ{args.m}"
        index = faiss.index_factory(args.dim, factory, faiss.METRIC_INNER_PRODUCT)
        index.train(sample)
        index.add(x)
        indexes[kind] = index
        out["build_seconds"][kind] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    module = LearnableIVFPQ.from_faiss_training(sample, args.nlist, args.m)
    cfg = DistillVQConfig(nlist=args.nlist, m=args.m, epochs=3, pseudo_queries=5000, top_k=100, n_inlist=50,
                          n_random=100, seed=0)
    trained = train_distill_vq(sample, np.zeros((0, args.dim), dtype=np.float32), cfg, module=module)
    indexes["distill-vq"] = export_faiss(trained.module, x)
    out["build_seconds"]["distill-vq"] = round(time.perf_counter() - t0, 1)

    # nprobe outside, indexes inside: the indexes compared at one nprobe are timed back to back
    for nprobe in (1, 2, 4, 8, 16, 32, 64, 128):
        for name, index in indexes.items():
            set_nprobe(index, nprobe)
            qps, ids = timed_search(index, q)
            row = {"nprobe": nprobe, "qps": round(qps, 1), "recall@10": round(recall_at_10(ids, truth), 4)}
            out["indexes"].setdefault(name, []).append(row)
            logging.info("%s nprobe=%d %.1f q/s R@10 %.4f", name, nprobe, qps, row["recall@10"])
    ratios = [d["qps"] / f["qps"] for d, f in zip(out["indexes"]["distill-vq"], out["indexes"]["ivfpq"])]
    out["distill_vq_vs_ivfpq_qps_ratio"] = {"per_nprobe": [round(r, 3) for r in ratios],
                                            "median": round(float(np.median(ratios)), 3)}
    out["hardware"] = hardware_info()
    out["command"] = "python benchmarks/ann_speed.py"
    with atomic_write(args.output) as fh:  # written now too, in case the HNSW build is cut short
        json.dump(out, fh, indent=1)
    if not args.no_hnsw:
        t0 = time.perf_counter()
        faiss.omp_set_num_threads(max(args.threads, 2))  # building is parallel; search stays single-threaded
        hnsw = build_faiss_index("hnsw", x, ef_construction=40)
        faiss.omp_set_num_threads(args.threads)
        out["build_seconds"]["hnsw"] = round(time.perf_counter() - t0, 1)
        curve = []
        for ef in (16, 32, 64, 128, 256):
            set_nprobe(hnsw, None, ef_search=ef)
            qps, ids = timed_search(hnsw, q)
            curve.append({"efSearch": ef, "qps": round(qps, 1), "recall@10": round(recall_at_10(ids, truth), 4)})
            logging.info("hnsw ef=%d %.1f q/s R@10 %.4f", ef, qps, curve[-1]["recall@10"])
        out["indexes"]["hnsw"] = curve
    print(f"{args.n} x {args.dim} synthetic, {args.m} bytes/vector, nlist {args.nlist}, {args.threads} thread(s)")
    print("| index | nprobe | q/s | Recall@10 |")
    print("|---|---:|---:|---:|")
    for name in ("ivfpq", "opq-ivfpq", "distill-vq"):
        for row in out["indexes"][name]:
            print(f"| {name} | {row['nprobe']} | {row['qps']:.0f} | {row['recall@10']:.4f} |")
    for row in out["indexes"].get("hnsw", []):
        print(f"| hnsw (efSearch {row['efSearch']}) | - | {row['qps']:.0f} | {row['recall@10']:.4f} |")
    print(f"| flat | - | {flat_qps:.1f} | 1.0000 |")
    print(f"Distill-VQ / IVFPQ q/s ratio, median over nprobe: {out['distill_vq_vs_ivfpq_qps_ratio']['median']}")
    with atomic_write(args.output) as fh:
        json.dump(out, fh, indent=1)
    print(f"results: {args.output}")


if __name__ == "__main__":
    main()
