"""Seed spread of the demo's compressed-index rows: FAISS IVFPQ and Distill-VQ rebuilt with other seeds.

Usage (after `make demo`; reads its dense student and the corpus embeddings it cached):
  python benchmarks/demo_seeds.py [--experiment experiments/scifact-demo] [--m 48 16] [--seeds 0 1 2]

One k-means initialisation per row is what `make demo` can afford; this says how far a row moves with the seed
alone (same student, same vectors, the demo's settings read from its config.json: nlist, nprobe, Distill-VQ's
epochs, pseudo-queries and held-out share), so that a row that moved
between two demo runs can be told apart from a change that made it worse. No test query trains or selects
anything; nDCG@10 on SciFact test is read at the end. Writes benchmarks/results/demo_seeds.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np

from retrieval_kd.data import load_collection
from retrieval_kd.data.formats import atomic_write
from retrieval_kd.encoders import corpus_embeddings, query_embeddings
from retrieval_kd.encoders.backends import resolve_encoding
from retrieval_kd.eval import evaluate
from retrieval_kd.index import export_faiss
from retrieval_kd.index.dense import build_faiss_index, search_index
from retrieval_kd.quantization import DistillVQConfig, train_distill_vq
from retrieval_kd.search.dense import hits_to_run
from retrieval_kd.utils.hardware import hardware_info

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", type=Path, default=ROOT / "experiments" / "scifact-demo")
    p.add_argument("--dataset", default="scifact")
    p.add_argument("--m", type=int, nargs="+", default=[48, 16])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--encoding", default="auto", help="as the demo's `encoding` (auto: what the pipeline picks)")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "demo_seeds.json")
    args = p.parse_args()

    faiss.omp_set_num_threads(1)
    model = str(args.experiment / "models" / "dense")
    flat = args.experiment / "indexes" / f"{args.dataset}-test" / "flat" / "rkd_index.json"
    if not Path(model).is_dir() or not flat.is_file():
        raise SystemExit(f"{args.experiment}: no dense student or flat index (run make demo first)")
    ix = json.loads((args.experiment / "config.json").read_text())["index"]  # the demo's own settings
    max_len = json.loads(flat.read_text())["max_seq_length"]
    coll = load_collection(args.dataset)
    encoding = resolve_encoding(args.encoding, "dense", model=model)
    docs = np.ascontiguousarray(corpus_embeddings(model, coll.corpus, max_len, encoding=encoding), dtype=np.float32)
    train_q = query_embeddings(model, coll.queries("train"), max_len, encoding=encoding)
    test = coll.queries("test")
    q = query_embeddings(model, test, max_len, encoding=encoding)

    def ndcg(index) -> float:
        scores, rows = search_index(index, q, 1000, nprobe=ix["nprobe"])
        run = hits_to_run(scores, rows, coll.corpus.ids, list(test))
        return round(evaluate(coll.qrels("test"), run, ["ndcg@10"], 1).scores["ndcg@10"], 4)

    rows, meta = {}, {}
    for m in args.m:
        for seed in args.seeds:
            t0 = time.perf_counter()
            rows.setdefault(f"ivfpq-{m}", {})[str(seed)] = ndcg(
                build_faiss_index("ivfpq", docs, nlist=ix["nlist"], m=m, seed=seed))
            # as the pipeline's index stage: its defaults, the config's distill_vq, the seed varied
            config = DistillVQConfig(**{"pseudo_queries": 3000, **ix["distill_vq"], "seed": seed, "nlist": ix["nlist"],
                                        "m": m})
            trained = train_distill_vq(docs, train_q, config)
            rows.setdefault(f"distill-vq-{m}", {})[str(seed)] = ndcg(
                export_faiss(trained.module, lists=trained.lists, codes=trained.codes))
            meta[f"distill-vq-{m}-s{seed}"] = {"history": trained.history,
                                               "seconds": round(time.perf_counter() - t0, 1)}
            print(json.dumps({"m": m, "seed": seed, "ivfpq": rows[f"ivfpq-{m}"][str(seed)],
                              "distill-vq": rows[f"distill-vq-{m}"][str(seed)]}), flush=True)
    summary = {name: {"seeds": by_seed, "mean": round(float(np.mean(list(by_seed.values()))), 4),
                      "min": min(by_seed.values()), "max": max(by_seed.values())} for name, by_seed in rows.items()}
    result = {"rows": summary, "student": model, "encoding": encoding.describe(), "runs": meta,
              "hardware": hardware_info()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.output) as fh:
        json.dump(result, fh, indent=1, default=str)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
