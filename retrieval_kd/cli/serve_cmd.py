"""``rkd serve``: an HTTP JSON search service over index folders (dense FAISS, learned sparse, BM25, hybrids)."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from retrieval_kd.cli.argtypes import non_negative_float, non_negative_int, positive_int
from retrieval_kd.encoders.backends import ENCODING_CHOICES

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NORMALIZATIONS = ("minmax", "zscore", "rrf")


def index_arg(text: str) -> tuple[str, Path]:
    """``PATH`` (named after its folder) or ``NAME=PATH``."""
    name, sep, path = text.partition("=")
    if not sep:
        name, path = Path(text.rstrip("/")).name, text
    if not _NAME.match(name):
        raise argparse.ArgumentTypeError(f"{text!r}: the index name {name!r} may hold letters, digits, '_', '.' and "
                                         "'-' only; name it with NAME=PATH")
    if not path:
        raise argparse.ArgumentTypeError(f"{text!r}: give the index folder after '='")
    return name, Path(path)


def hybrid_arg(text: str):
    """``NAME=A+B[,weights=0.3:0.7][,normalization=minmax|zscore|rrf][,depth=100]``."""
    from retrieval_kd.serve.app import HybridSpec

    name, sep, rest = text.partition("=")
    if not sep or not _NAME.match(name):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=A+B[,weights=0.3:0.7,normalization=rrf,depth=100]")
    members, *options = rest.split(",")
    spec = {"members": tuple(m for m in members.split("+") if m)}
    if len(spec["members"]) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: a hybrid fuses two or more served indexes: NAME=A+B")
    for option in options:
        key, _, value = option.partition("=")
        try:
            if key == "weights":
                spec["weights"] = tuple(float(w) for w in value.split(":"))
                if len(spec["weights"]) != len(spec["members"]):
                    raise ValueError(f"{len(spec['weights'])} weights for {len(spec['members'])} members")
            elif key == "normalization":
                if value not in _NORMALIZATIONS:
                    raise ValueError(f"use one of {', '.join(_NORMALIZATIONS)}")
                spec["normalization"] = value
            elif key == "depth":
                spec["depth"] = positive_int(value)
            else:
                raise ValueError("options are weights=, normalization= and depth=")
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {option!r}: {exc}") from None
    return name, HybridSpec(**spec)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve index folders over HTTP (JSON search API, OpenAPI docs at /docs)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  rkd serve indexes/bm25/scifact dense=experiments/scifact-demo/indexes/scifact/distill-vq-48 --port 8000\n"
        "  rkd serve bm25=indexes/bm25/scifact dense=indexes/scifact-flat --hybrid both=bm25+dense,normalization=rrf\n"
        "  curl -s localhost:8000/search -d '{\"index\": \"dense\", \"queries\": [\"vitamin d and covid\"], \"k\": 5}'")
    p.add_argument("indexes", nargs="+", type=index_arg, metavar="INDEX",
                   help="an index folder (named after it) or NAME=FOLDER: dense FAISS, sparse inverted or BM25")
    p.add_argument("--hybrid", action="append", default=[], type=hybrid_arg, metavar="NAME=A+B[,OPTIONS]",
                   help="serve a fusion of served indexes too; options: weights=0.3:0.7, normalization=minmax|"
                        "zscore|rrf, depth=100 (candidates per member); repeatable")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only; the service "
                                                       "has no authentication)")
    p.add_argument("--port", type=non_negative_int, default=8000, help="port (0: a free one, printed at start)")
    p.add_argument("--nprobe", type=positive_int, default=None, help="IVF lists visited per query (dense IVF indexes)")
    p.add_argument("--ef-search", type=positive_int, default=None, help="HNSW efSearch (dense HNSW indexes)")
    p.add_argument("--max-k", type=positive_int, default=1000, help="largest k a request may ask for")
    p.add_argument("--max-queries", type=positive_int, default=256, help="queries per request, at most")
    p.add_argument("--max-query-chars", type=positive_int, default=2048, help="characters per query, at most")
    p.add_argument("--max-body-bytes", type=positive_int, default=1 << 20, help="request body size, at most")
    p.add_argument("--batch-window-ms", type=non_negative_float, default=2.0,
                   help="dense indexes: how long to wait after a request for others to encode with it (0: batch "
                        "only requests that queue up while a batch is searched)")
    p.add_argument("--max-batch", type=positive_int, default=64, help="queries per micro-batch, at most")
    p.add_argument("--threads", type=non_negative_int, default=1,
                   help="torch and FAISS threads per search (default 1: concurrency comes from micro-batching, and "
                        "the event loop needs a core; on a busy 2-core machine torch's default of all cores ran a "
                        "MiniLM query in 100-400 ms against 12 ms on one thread; 0: their default)")
    p.add_argument("--encoding", choices=ENCODING_CHOICES, default=None,
                   help="query encoder backend of the dense and sparse indexes (torch, torch-bf16, "
                        "torch-bf16-compile, onnx, onnx-int8, openvino, auto; default: torch; see README, Encoding "
                        "backends)")
    p.add_argument("--access-log", action="store_true", help="log every request (costs time per request)")
    p.add_argument("--no-warmup", action="store_true", help="skip the one-query warm-up of each index at start")
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    from retrieval_kd.search.retriever import Retriever
    from retrieval_kd.serve import ServeConfig, bind, create_app, uvicorn_server

    # sentence-transformers draws a progress bar per encode() call at INFO level: one per request here
    logging.getLogger("sentence_transformers").setLevel(max(logging.WARNING, logging.getLogger().level))
    names = [name for name, _ in args.indexes] + [name for name, _ in args.hybrid]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"index name(s) {', '.join(repeated)} given twice; name them with NAME=FOLDER")
    config = ServeConfig(max_k=args.max_k, max_queries=args.max_queries, max_query_chars=args.max_query_chars,
                         max_body_bytes=args.max_body_bytes, batch_window_ms=args.batch_window_ms,
                         max_batch=args.max_batch, default_k=min(10, args.max_k))
    if args.threads:
        import faiss
        import torch

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    sock = bind(args.host, args.port)  # before the indexes load: a taken port fails at once
    try:
        indexes = {name: Retriever(folder, **_dense_options(folder, args), encoding=args.encoding, cache_queries=False)
                   for name, folder in args.indexes}
        app = create_app(indexes, dict(args.hybrid), config, warmup=not args.no_warmup)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    listed = ", ".join(f"{n} ({getattr(r, 'kind', '?')})" for n, r in indexes.items())
    hybrids = "".join(f", {n} (hybrid of {'+'.join(s.members)})" for n, s in args.hybrid)
    print(f"rkd serve: {listed}{hybrids} on {url} (API docs: {url}/docs); Ctrl-C stops", flush=True)
    uvicorn_server(app, access_log=args.access_log).run(sockets=[sock])
    return 0


def _dense_options(folder: Path, args) -> dict:
    """``--nprobe`` / ``--ef-search`` for the dense indexes among several kinds (the others take neither)."""
    from retrieval_kd.index.sidecar import index_kind

    if index_kind(folder) != "dense":
        return {}
    return {"nprobe": args.nprobe, "ef_search": args.ef_search}
