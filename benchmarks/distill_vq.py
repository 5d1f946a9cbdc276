"""Distill-VQ against FAISS's own compressed indexes, same code size, nlist and nprobe, in one run.

Usage: python benchmarks/distill_vq.py [--datasets scifact trec-dl-2019-passage] [--m 48 16] [--nlist 64]
       [--nprobe 8] [--epochs 8]

Embeddings: all-MiniLM-L6-v2 (384-d, cosine), corpus and queries cached on disk. For each dataset and code size
(m bytes per vector at 8 bits: 48 -> 32x, 16 -> 96x compression of 1,536-byte float vectors):
flat (exact), HNSW32 (uncompressed, for reference), PQ, IVFPQ, OPQ+IVFPQ (``index_factory``), and Distill-VQ
(IVFPQ learned by distillation, exported to a FAISS IndexIVFPQ; with ``--opq``, ``distill_vq_opq`` also learns
an OPQ rotation). Each result is merged into the JSON file, so datasets and sizes can be run separately.
Training queries: SciFact's train split plus corpus passages as pseudo-queries; TREC DL 2019 has no training
queries here, so it uses pseudo-queries (sampled passages) alone, as the paper allows. Test queries are never
used for training. ``--holdout`` keeps a share of the training queries out to pick the epoch (the FAISS
initialisation included) by Recall@10 of the exact top-10 at the benchmark's nprobe: no labels involved. Metrics on the test split: nDCG@10, Recall@100, and the fraction of flat nDCG@10 retained.

Writes benchmarks/results/distill_vq.json ({dataset: {bytes: {index: {ndcg@10, recall@100, retained}}}}) and
distill_vq.meta.json beside it (parameters, training history, timings, command, hardware).
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

from retrieval_kd.data import load_collection
from retrieval_kd.data.formats import atomic_write
from retrieval_kd.encoders import corpus_embeddings, query_embeddings
from retrieval_kd.eval import evaluate, to_markdown
from retrieval_kd.index import export_faiss
from retrieval_kd.index.dense import build_faiss_index, bytes_per_vector, search_index
from retrieval_kd.quantization import DistillVQConfig, train_distill_vq
from retrieval_kd.utils.hardware import hardware_info

ROOT = Path(__file__).resolve().parents[1]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def evaluate_index(index, queries, qids, doc_ids, qrels, level, nprobe, k=100):
    scores, rows = search_index(index, queries, k, nprobe=nprobe, ef_search=128)
    run = {q: {doc_ids[int(r)]: float(s) for s, r in zip(scores[i], rows[i]) if r >= 0} for i, q in enumerate(qids)}
    res = evaluate(qrels, run, ["ndcg@10", "recall@100"], level).scores
    return {k: round(v, 4) for k, v in res.items()}


def _load(path: Path) -> tuple[dict, dict]:
    """Earlier results to merge into: the results file and its meta file."""
    out = json.loads(path.read_text()) if path.exists() else {}
    meta_path = path.with_suffix(".meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    for key in ("hardware", "command"):  # older files kept these beside the datasets
        if key in out:
            meta[key] = out.pop(key)
    for name, sizes in out.items():
        for size, rows in sizes.items():
            extra = {k: rows.pop(k) for k in list(rows) if not isinstance(rows[k], dict) or k in ("seconds", "history")}
            if extra:
                meta.setdefault(name, {}).setdefault(size, {}).update(extra)
    return out, meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["scifact", "trec-dl-2019-passage"])
    parser.add_argument("--m", type=int, nargs="+", default=[48, 16])
    parser.add_argument("--nlist", type=int, default=64)
    parser.add_argument("--nprobe", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--pseudo-queries", type=int, default=3000)
    parser.add_argument("--holdout", type=float, default=0.0,
                        help="share of the training queries held out to pick the epoch (label-free; 0: last epoch)")
    parser.add_argument("--opq", action="store_true", help="add the Distill-VQ variant that learns an OPQ rotation too")
    parser.add_argument("--no-opq", action="store_true", help=argparse.SUPPRESS)  # the default, kept for old commands
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "distill_vq.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("huggingface_hub", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)

    out, meta = _load(args.output)
    for name in args.datasets:
        c = load_collection(name)
        doc_ids = c.corpus.ids
        docs = np.ascontiguousarray(corpus_embeddings(MODEL, c.corpus), dtype=np.float32)
        test = c.queries("test")
        q_test = query_embeddings(MODEL, test)
        train = c.queries("train") if "train" in c.splits else {}
        q_train = query_embeddings(MODEL, train) if train else np.zeros((0, docs.shape[1]), dtype=np.float32)
        qrels, level = c.qrels("test"), c.conventions.relevance_level
        qids = list(test)
        result = out.setdefault(name, {})
        result_meta = meta.setdefault(name, {})
        flat = evaluate_index(build_faiss_index("flat", docs), q_test, qids, doc_ids, qrels, level, None)
        hnsw = evaluate_index(build_faiss_index("hnsw", docs), q_test, qids, doc_ids, qrels, level, None)
        for m in args.m:
            rows = {"flat": flat, "hnsw": hnsw}
            timings = {}
            for kind in ("pq", "ivfpq", "opq-ivfpq"):
                t0 = time.perf_counter()
                index = build_faiss_index(kind, docs, nlist=args.nlist, m=m)
                timings[kind] = round(time.perf_counter() - t0, 1)
                rows[kind.replace("-", "_")] = evaluate_index(index, q_test, qids, doc_ids, qrels, level, args.nprobe)
                assert bytes_per_vector(index) == m
            variants = [("distill_vq", False)] + ([("distill_vq_opq", True)] if args.opq else [])
            history = {}
            for label, opq in variants:
                cfg = DistillVQConfig(nlist=args.nlist, m=m, opq=opq, epochs=args.epochs,
                                      pseudo_queries=args.pseudo_queries, holdout=args.holdout,
                                      holdout_nprobe=args.nprobe, seed=0)
                t0 = time.perf_counter()
                trained = train_distill_vq(docs, q_train, cfg)
                timings[label] = round(time.perf_counter() - t0, 1)
                index = export_faiss(trained.module, lists=trained.lists, codes=trained.codes)
                rows[label] = evaluate_index(index, q_test, qids, doc_ids, qrels, level, args.nprobe)
                history[label] = trained.history
            for row in rows.values():
                row["retained"] = round(row["ndcg@10"] / flat["ndcg@10"], 4)
            result[str(m)] = rows
            result_meta[str(m)] = {"bytes_per_vector": m, "compression": round(docs.shape[1] * 4 / m, 1),
                                   "nlist": args.nlist, "nprobe": args.nprobe, "train_queries": len(q_train),
                                   "pseudo_queries": args.pseudo_queries, "epochs": args.epochs,
                                   "holdout": args.holdout, "seconds": timings,
                                   "history": history}
            print(f"\n{name} test, {m} bytes/vector ({docs.shape[1] * 4 // m}x), nlist {args.nlist}, nprobe {args.nprobe}")
            print(to_markdown(rows, ["ndcg@10", "recall@100", "retained"]))
            meta["hardware"] = hardware_info()
            meta["command"] = "python benchmarks/distill_vq.py"
            with atomic_write(args.output) as fh:
                json.dump(out, fh, indent=1)
            with atomic_write(args.output.with_suffix(".meta.json")) as fh:
                json.dump(meta, fh, indent=1)
    print(f"results: {args.output}")


if __name__ == "__main__":
    main()
