"""``rkd search``: first-stage retrieval into a TREC run file (BM25, dense, sparse, hybrid), for a dataset split's
queries or any queries file; index folders are searched through :class:`retrieval_kd.search.Retriever`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from retrieval_kd.cli.argtypes import non_negative_float, non_negative_int, output_file, positive_int, unit_float
from retrieval_kd.encoders.backends import ENCODING_CHOICES

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
    bm25.add_argument("--dataset", help="registered name, BEIR folder, or irds:<id>; with --index, default "
                      "the dataset it was built on")
    add_query_source(bm25)
    bm25.add_argument("--top-k", type=positive_int, default=1000)
    bm25.add_argument("--output", required=True, type=output_file, help="TREC run file (.gz to compress)")
    bm25.add_argument("--index", type=Path, default=None, help="index folder (default: indexes/bm25/<dataset>)")
    bm25.add_argument("--k1", type=non_negative_float, default=0.9, help="term-frequency saturation (>= 0)")
    bm25.add_argument("--b", type=unit_float, default=0.4, help="length normalisation, in [0, 1]")
    bm25.add_argument("--rebuild", action="store_true", help="rebuild the index even if one exists")
    bm25.add_argument("--overwrite", action="store_true",
                      help="replace --index even if it is not a BM25 index folder retrieval-kd wrote")
    bm25.add_argument("--threads", type=non_negative_int, default=0, help="search threads (0: all cores)")
    bm25.set_defaults(func=_bm25)
    dense = kind.add_parser(
        "dense",
        help="dense retrieval: exact FAISS search with --model, or an ANN index folder with --index",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  rkd search dense --model sentence-transformers/all-MiniLM-L6-v2 --dataset scifact --split test "
        "--output runs/minilm.run\n  rkd search dense --index indexes/scifact-dvq48 --nprobe 8 --dataset scifact --split test "
        "--output runs/dvq.run",
    )
    dense.add_argument("--dataset", help="registered name, BEIR folder, or irds:<id>; with --index, default "
                       "the dataset it was built on (needed by --model)")
    add_query_source(dense)
    dense.add_argument("--output", required=True, type=output_file)
    dense.add_argument("--model", default=None, help="SentenceTransformer (hub id or folder); exact search over its "
                       "cached corpus embeddings when --index is not given")
    dense.add_argument("--index", type=Path, default=None, help="index folder from rkd index build / rkd vq train")
    dense.add_argument("--nprobe", type=positive_int, default=None, help="IVF lists visited per query")
    dense.add_argument("--ef-search", type=positive_int, default=None, help="HNSW efSearch")
    dense.add_argument("--gpu", type=non_negative_int, default=None, metavar="DEVICE",
                       help="search the --index on this GPU (faiss-gpu); types FAISS has no GPU version of, or no "
                            "GPU at all, fall back to CPU with a warning")
    dense.add_argument("--top-k", type=positive_int, default=1000)
    dense.add_argument("--max-seq-length", type=positive_int, default=None,
                       help="query truncation (default: the index's, else 256)")
    dense.add_argument("--encoding", choices=ENCODING_CHOICES, default="torch",
                       help="exact search (--model): the backend that encodes corpus and queries (torch: fp32; "
                            "auto: by the CPU's instruction sets; see rkd export-model)")
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
    sparse.add_argument("--dataset", help="registered name, BEIR folder, or irds:<id>; with --index, default "
                        "the dataset it was built on")
    add_query_source(sparse)
    sparse.add_argument("--output", required=True, type=output_file)
    sparse.add_argument("--model", default=None, help="query encoder (default: the index sidecar's encoder)")
    sparse.add_argument("--top-k", type=positive_int, default=1000)
    sparse.set_defaults(func=_sparse)
    hybrid = kind.add_parser(
        "hybrid",
        help="fuse several indexes of one corpus (BM25 / sparse + dense): per-query normalised, weighted sum "
             "(minmax, zscore, as the ensemble teacher) or reciprocal-rank fusion",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  rkd search hybrid --index indexes/bm25/scifact --index indexes/scifact-dvq48 "
        "--normalization minmax --weights 0.3 0.7 --dataset scifact --split test --output runs/hybrid.run\n"
        "a document missing from one index's top --depth counts as that list's minimum after normalisation "
        "(rrf: adds nothing)",
    )
    hybrid.add_argument("--index", required=True, type=Path, action="append",
                        help="an index folder (any kind); repeat for each member")
    hybrid.add_argument("--weights", type=non_negative_float, nargs="+", default=None,
                        help="one per --index (default equal; rrf: 1 each)")
    hybrid.add_argument("--normalization", choices=["minmax", "zscore", "rrf"], default="minmax")
    hybrid.add_argument("--depth", type=positive_int, default=100, help="documents per index before fusion")
    hybrid.add_argument("--rrf-k", type=non_negative_float, default=60.0, help="the constant of rrf")
    hybrid.add_argument("--dataset", help="registered name, BEIR folder, or irds:<id>; default the dataset the "
                        "first --index was built on")
    add_query_source(hybrid)
    hybrid.add_argument("--top-k", type=positive_int, default=100)
    hybrid.add_argument("--output", required=True, type=output_file)
    hybrid.set_defaults(func=_hybrid)


def add_query_source(p, required: bool = True) -> None:
    """``--split S | --queries FILE``: the queries judged in a split of --dataset, or those of a file."""
    source = p.add_mutually_exclusive_group(required=required)
    source.add_argument("--split", help="the queries judged in this split of the dataset")
    source.add_argument("--queries", type=Path,
                        help="the queries of this file instead: TSV qid<TAB>text, or BEIR queries.jsonl")


def queries_of(args, collection) -> dict[str, str]:
    """The queries ``--split``/``--queries`` name (all of ``collection``'s when neither is given)."""
    from retrieval_kd.data import read_queries

    if args.queries is not None:
        return read_queries(args.queries)
    if collection is None:
        raise ValueError("--split needs a dataset: give --dataset, or an --index whose sidecar names one")
    return collection.queries(args.split)


def _write(args, run: dict, tag: str) -> int:
    from retrieval_kd.data import write_run

    write_run(run, args.output, tag=tag)
    print(f"wrote {args.output}: {len(run)} queries, top-{args.top_k}")
    return 0


def _search(args, searcher, tag: str, retriever=None) -> int:
    """Search ``--split``/``--queries`` with a Retriever or HybridRetriever into ``--output``; the dataset (of
    ``retriever``, default ``searcher``) is loaded for ``--split`` and checked against the index when named."""
    retriever = retriever or searcher
    collection = retriever.collection() if args.dataset or args.queries is None else None
    return _write(args, searcher.search_run(queries_of(args, collection), args.top_k), tag)


def _bm25(args) -> int:
    from retrieval_kd.data import load_collection
    from retrieval_kd.search import BM25Params, Retriever, bm25_index_for
    from retrieval_kd.utils.progress import progress_enabled

    if args.dataset is None:  # an index that exists already, searched with its own dataset's or a file's queries
        if args.index is None:
            raise ValueError("give --dataset (its corpus is indexed), or the --index folder of a built BM25 index")
        retriever = Retriever(args.index)
        collection, index = (retriever.collection() if args.queries is None else None), retriever.index
    else:
        collection = load_collection(args.dataset)
        index = bm25_index_for(collection, args.index, BM25Params(k1=args.k1, b=args.b), args.rebuild,
                               args.overwrite)
    run = index.search(queries_of(args, collection), top_k=args.top_k, n_threads=args.threads,
                       show_progress=progress_enabled())
    return _write(args, run, f"bm25-k1{index.params.k1}-b{index.params.b}")


def _dense(args) -> int:
    from retrieval_kd.data import load_collection
    from retrieval_kd.search import Retriever

    if args.index is not None and args.encoding != "torch":
        raise ValueError("--encoding is for exact search with --model; an --index's queries are encoded in torch")
    if args.index is not None:
        return _search(args, Retriever(args.index, encoder=args.model, nprobe=args.nprobe, ef_search=args.ef_search,
                                       dataset=args.dataset, max_seq_length=args.max_seq_length, gpu=args.gpu),
                       "dense")
    if not args.model or not args.dataset:
        raise ValueError("give --model and --dataset (exact search over its corpus), or --index")
    from retrieval_kd.search.dense import dense_search

    collection = load_collection(args.dataset)
    run = dense_search(args.model, collection, queries_of(args, collection), args.top_k, args.max_seq_length or 256,
                       encoding=args.encoding)
    return _write(args, run, "dense")


def _sparse(args) -> int:
    from retrieval_kd.search import Retriever

    return _search(args, Retriever(args.index, encoder=args.model, dataset=args.dataset), "sparse")


def _hybrid(args) -> int:
    from retrieval_kd.search import HybridRetriever, Retriever

    members = [Retriever(folder, dataset=args.dataset) for folder in args.index]
    hybrid = HybridRetriever(members, weights=args.weights, normalization=args.normalization, depth=args.depth,
                             rrf_k=args.rrf_k)
    return _search(args, hybrid, f"hybrid-{args.normalization}", retriever=members[0])
