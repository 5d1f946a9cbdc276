"""BM25 baseline (bm25s, k1=0.9, b=0.4, English stemming and stopwords) on SciFact test and TREC DL 2019.

Usage: python benchmarks/bm25_baseline.py [--datasets scifact trec-dl-2019-passage] [--top-k 1000]
Writes runs to runs/, results to benchmarks/results/bm25.json, and prints the table (the demo's output).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from retrieval_kd.data import load_collection, write_run
from retrieval_kd.data.formats import atomic_write
from retrieval_kd.eval import evaluate, to_markdown
from retrieval_kd.search import bm25_index_for
from retrieval_kd.utils.hardware import hardware_info

ROOT = Path(__file__).resolve().parents[1]
SPLITS = {"scifact": "test", "trec-dl-2019-passage": "test", "cranfield": "test"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["scifact", "trec-dl-2019-passage"])
    parser.add_argument("--top-k", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "bm25.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    rows, results = {}, {}
    for name in args.datasets:
        collection = load_collection(name)
        split = SPLITS.get(name, "test")
        t0 = time.perf_counter()
        index = bm25_index_for(collection)
        t1 = time.perf_counter()
        queries = collection.queries(split)
        run = index.search(queries, top_k=args.top_k, n_threads=1)
        t2 = time.perf_counter()
        write_run(run, ROOT / "runs" / f"{name}-{split}-bm25.run.gz", tag="bm25")
        conv = collection.conventions_for(split)
        scores = evaluate(collection.qrels(split), run, conv.metrics, conv.relevance_level,
                          conv.ignore_identical_ids).scores
        rows[f"BM25 {name}/{split}"] = scores
        results[name] = {
            "split": split, "queries": len(queries), "relevance_level": conv.relevance_level, **scores,
            "index_seconds": round(t1 - t0, 2), "search_seconds_1thread": round(t2 - t1, 3),
        }
    metrics = ["ndcg@10", "mrr@10", "recall@100", "recall@1000", "map"]
    print(to_markdown(rows, metrics))
    with atomic_write(args.output) as fh:
        json.dump({"results": results, "hardware": hardware_info(), "command": "python benchmarks/bm25_baseline.py"},
                  fh, indent=1)
    print(f"\nresults: {args.output.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
