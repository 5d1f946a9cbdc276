"""``rkd search``: first-stage retrieval into a TREC run file."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="retrieve top-k documents for a dataset's queries into a TREC run")
    kind = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    bm25 = kind.add_parser(
        "bm25",
        help="BM25 (bm25s); the index is built once and kept under indexes/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  rkd search bm25 --dataset scifact --split test --top-k 1000 --output runs/scifact-bm25.run",
    )
    bm25.add_argument("--dataset", required=True, help="registered name, BEIR folder, or irds:<id>")
    bm25.add_argument("--split", required=True, help="the queries judged in this split are searched")
    bm25.add_argument("--top-k", type=int, default=1000)
    bm25.add_argument("--output", required=True, type=Path, help="TREC run file (.gz to compress)")
    bm25.add_argument("--index", type=Path, default=None, help="index folder (default: indexes/bm25/<dataset>)")
    bm25.add_argument("--k1", type=float, default=0.9)
    bm25.add_argument("--b", type=float, default=0.4)
    bm25.add_argument("--rebuild", action="store_true", help="rebuild the index even if one exists")
    bm25.add_argument("--threads", type=int, default=0, help="search threads (0: all cores)")
    bm25.set_defaults(func=_bm25)


def _bm25(args) -> int:
    from retrieval_kd.data import load_collection, write_run
    from retrieval_kd.search import BM25Params, bm25_index_for
    from retrieval_kd.utils.progress import progress_enabled

    collection = load_collection(args.dataset)
    queries = collection.queries(args.split)
    index = bm25_index_for(collection, args.index, BM25Params(k1=args.k1, b=args.b), args.rebuild)
    run = index.search(queries, top_k=args.top_k, n_threads=args.threads, show_progress=progress_enabled())
    write_run(run, args.output, tag=f"bm25-k1{args.k1}-b{args.b}")
    print(f"wrote {args.output}: {len(run)} queries, top-{args.top_k}")
    return 0
