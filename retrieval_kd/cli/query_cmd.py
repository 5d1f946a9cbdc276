"""``rkd query``: search one index folder for one query and print the ranked documents."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from retrieval_kd.cli.argtypes import non_negative_int, positive_int
from retrieval_kd.encoders.backends import ENCODING_CHOICES

logger = logging.getLogger(__name__)
_SNIPPET = 100  # characters of each document shown


def add_parser(sub) -> None:
    p = sub.add_parser(
        "query", help="search any index folder (dense, sparse, BM25) for a query; print ids, scores, snippets",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  rkd query indexes/scifact-dvq48 \"what causes anemia\" -k 5\n"
        "  rkd query indexes/bm25/scifact \"vitamin d deficiency\" --json")
    p.add_argument("index", type=Path, help="an index folder (rkd index build, rkd vq train, rkd search bm25)")
    p.add_argument("text", help="the query")
    p.add_argument("-k", "--top-k", dest="k", type=positive_int, default=10, help="documents to show")
    p.add_argument("--json", action="store_true",
                   help='print a JSON list of {"doc_id", "score", "title", "text"} instead')
    p.add_argument("--nprobe", type=positive_int, default=None, help="IVF lists visited (dense IVF indexes)")
    p.add_argument("--ef-search", type=positive_int, default=None, help="HNSW efSearch (dense HNSW indexes)")
    p.add_argument("--encoder", default=None,
                   help="query encoder (default: the index's; needed for an index built from bare --embeddings)")
    p.add_argument("--dataset", default=None,
                   help="the corpus for titles and texts (default: the dataset the index was built on)")
    p.add_argument("--gpu", type=non_negative_int, default=None, metavar="DEVICE",
                   help="search a dense index on this GPU (faiss-gpu)")
    p.add_argument("--encoding", choices=ENCODING_CHOICES, default=None,
                   help="query encoder backend of a dense or sparse index (as rkd serve --encoding; default torch)")
    p.set_defaults(func=_query)


def _query(args) -> int:
    from retrieval_kd.search import Retriever

    retriever = Retriever(args.index, encoder=args.encoder, nprobe=args.nprobe, ef_search=args.ef_search,
                          dataset=args.dataset, gpu=args.gpu, encoding=args.encoding)
    with_text = bool(retriever.describe()["dataset"])
    if not with_text:
        logger.warning("%s names no dataset: ids and scores only (give --dataset for texts)", args.index)
    hits = retriever.search(args.text, k=args.k, with_text=with_text)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], ensure_ascii=False))
        return 0
    for rank, hit in enumerate(hits, start=1):
        snippet = " ".join(filter(None, (hit.title and f"{hit.title}:", hit.text)))
        snippet = snippet if len(snippet) <= _SNIPPET else snippet[:_SNIPPET - 3] + "..."
        print(f"{rank:>3}  {hit.doc_id}  {hit.score:.4f}  {snippet}".rstrip())
    if not hits:
        print("no documents match")
    return 0
