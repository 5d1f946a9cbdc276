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
    dense = kind.add_parser(
        "dense",
        help="dense retrieval: exact FAISS search with --model, or an ANN index folder with --index",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  rkd search dense --model sentence-transformers/all-MiniLM-L6-v2 --dataset scifact --split test "
        "--output runs/minilm.run\n  rkd search dense --index indexes/scifact-dvq48 --nprobe 8 --dataset scifact --split test "
        "--output runs/dvq.run",
    )
    dense.add_argument("--dataset", required=True)
    dense.add_argument("--split", required=True)
    dense.add_argument("--output", required=True, type=Path)
    dense.add_argument("--model", default=None, help="SentenceTransformer (hub id or folder); exact search over its "
                       "cached corpus embeddings when --index is not given")
    dense.add_argument("--index", type=Path, default=None, help="index folder from rkd index build / rkd vq train")
    dense.add_argument("--nprobe", type=int, default=None, help="IVF lists visited per query")
    dense.add_argument("--ef-search", type=int, default=None, help="HNSW efSearch")
    dense.add_argument("--gpu", type=int, default=None, metavar="DEVICE",
                       help="search the --index on this GPU (faiss-gpu); types FAISS has no GPU version of, or no "
                            "GPU at all, fall back to CPU with a warning")
    dense.add_argument("--top-k", type=int, default=1000)
    dense.add_argument("--max-seq-length", type=int, default=256)
    dense.set_defaults(func=_dense)
    sparse = kind.add_parser(
        "sparse",
        help="learned sparse retrieval over an inverted index (rkd index build sparse); inference-free queries "
             "are tokenised, never encoded by a model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  rkd search sparse --index indexes/scifact-sparse --dataset scifact --split test "
        "--output runs/sparse.run",
    )
    sparse.add_argument("--index", required=True, type=Path)
    sparse.add_argument("--dataset", required=True)
    sparse.add_argument("--split", required=True)
    sparse.add_argument("--output", required=True, type=Path)
    sparse.add_argument("--model", default=None, help="query encoder (default: the index sidecar's encoder)")
    sparse.add_argument("--top-k", type=int, default=1000)
    sparse.set_defaults(func=_sparse)


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


def _dense(args) -> int:
    from retrieval_kd.data import load_collection, write_run
    from retrieval_kd.encoders import query_embeddings
    from retrieval_kd.index.dense import load_index, search_index

    collection = load_collection(args.dataset)
    queries = collection.queries(args.split)
    if args.index is not None:
        index, doc_ids, meta = load_index(args.index)
        model = args.model or meta.get("encoder")
        if not model or model == "unknown":
            raise ValueError(f"{args.index}: the sidecar names no encoder; pass --model")
        if args.gpu is not None:
            from retrieval_kd.index import to_gpu

            index = to_gpu(index, device=args.gpu) or index
    else:
        if not args.model:
            raise ValueError("give --model (exact search) or --index")
        from retrieval_kd.search.dense import dense_search

        run = dense_search(args.model, collection, queries, args.top_k, args.max_seq_length)
        write_run(run, args.output, tag="dense")
        print(f"wrote {args.output}: {len(run)} queries, top-{args.top_k}")
        return 0
    q = query_embeddings(model, queries, args.max_seq_length)
    scores, rows = search_index(index, q, min(args.top_k, index.ntotal), args.nprobe, args.ef_search)
    run = {qid: {doc_ids[int(r)]: float(s) for s, r in zip(scores[i], rows[i]) if r >= 0}
           for i, qid in enumerate(queries)}
    write_run(run, args.output, tag="dense")
    print(f"wrote {args.output}: {len(run)} queries, top-{args.top_k}")
    return 0


def _sparse(args) -> int:
    from retrieval_kd.data import load_collection, write_run
    from retrieval_kd.encoders.sparse import load_sparse_encoder, sparse_query_vectors, sparse_rows
    from retrieval_kd.index.sparse import QueryTokenizer, SparseIndex

    collection = load_collection(args.dataset)
    queries = collection.queries(args.split)
    index, meta = SparseIndex.load(args.index)
    encoder = load_sparse_encoder(args.model or meta["encoder"])
    try:
        encoded = QueryTokenizer.from_sparse_encoder(encoder).encode_many(queries)   # inference-free
    except ValueError:
        encoded = sparse_rows(sparse_query_vectors(encoder, queries), queries)         # siamese: model queries
    run = index.search_many(encoded, k=args.top_k)
    write_run(run, args.output, tag="sparse")
    print(f"wrote {args.output}: {len(run)} queries, top-{args.top_k}")
    return 0
