"""``rkd index build`` and ``rkd vq train``: dense ANN indexes (FAISS baselines and Distill-VQ)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _encoded_corpus(args):
    """(doc_ids, embeddings, encoder id) from --embeddings/--doc-ids or from --model over --dataset's corpus."""
    import numpy as np

    if args.embeddings:
        if not args.doc_ids:
            raise ValueError("--embeddings needs --doc-ids (a JSON list of the rows' doc ids)")
        emb = np.load(args.embeddings, mmap_mode="r")
        doc_ids = json.loads(Path(args.doc_ids).read_text())
        if len(doc_ids) != emb.shape[0]:
            raise ValueError(f"{args.doc_ids}: {len(doc_ids)} ids for {emb.shape[0]} rows of {args.embeddings}")
        return doc_ids, np.asarray(emb, dtype=np.float32), args.model or "unknown"
    from retrieval_kd.data import load_collection
    from retrieval_kd.encoders import corpus_embeddings

    collection = load_collection(args.dataset)
    return collection.corpus.ids, np.asarray(corpus_embeddings(args.model, collection.corpus)), args.model


def _common(p) -> None:
    p.add_argument("--dataset", help="corpus to index (registered name, BEIR folder, irds:...)")
    p.add_argument("--model", default=MINILM, help="SentenceTransformer that encodes the corpus")
    p.add_argument("--embeddings", type=Path, help="precomputed corpus embeddings (.npy) instead of --model")
    p.add_argument("--doc-ids", type=Path, help="JSON list of doc ids, one per row of --embeddings")
    p.add_argument("--nlist", type=int, default=64)
    p.add_argument("--m", type=int, default=48, help="PQ sub-quantizers = bytes per vector at 8 bits")
    p.add_argument("--output", type=Path, required=True, help="index folder (e.g. indexes/scifact-ivfpq48)")


def add_parser(sub) -> None:
    index = sub.add_parser("index", help="build dense ANN indexes (FAISS files with a JSON sidecar)")
    action = index.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = action.add_parser(
        "build", help="build flat | hnsw | ivfpq | opq-ivfpq | pq | distill-vq",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  rkd index build --type ivfpq --dataset scifact --nlist 64 --m 48 --output indexes/scifact-ivfpq48\n"
        "  rkd index build --type distill-vq --vq indexes/scifact-dvq48 --output indexes/scifact-dvq48-copy\n"
        "  rkd index build sparse --model experiments/scifact-sparse/student --dataset scifact --prune 128 "
        "--output indexes/scifact-sparse")
    build.add_argument("--type", required=True,
                       choices=["flat", "hnsw", "ivfpq", "opq-ivfpq", "pq", "distill-vq", "sparse"],
                       help="`rkd index build sparse ...` is --type sparse: an inverted index of SparseEncoder vectors")
    build.add_argument("--prune", type=int, default=None, help="sparse: keep each document's K largest weights")
    build.add_argument("--max-seq-length", type=int, default=None,
                       help="sparse: document tokens per window (default: the model's max_seq_length)")
    build.add_argument("--windows", type=int, default=1,
                       help="sparse: encode a document longer than the model's max_seq_length as up to N windows, "
                            "max-pooled (default 1: truncate)")
    build.add_argument("--export", choices=["rank-features", "anserini"], default=None,
                       help="sparse: also write the document vectors for OpenSearch/Elasticsearch or Anserini")
    build.add_argument("--vq", type=Path, help="a folder written by `rkd vq train` (for --type distill-vq)")
    _common(build)
    build.set_defaults(func=_build)

    vq = sub.add_parser("vq", help="Distill-VQ: learn IVF-PQ codebooks by distillation, export to FAISS")
    vq_action = vq.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = vq_action.add_parser(
        "train", help="train Distill-VQ and write the module (safetensors) and its FAISS index",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  rkd vq train --dataset scifact --split train --nlist 64 --m 48 --output indexes/scifact-dvq48")
    _common(train)
    train.add_argument("--split", default="train", help="training queries (labels are not used)")
    train.add_argument("--queries", type=Path, help="precomputed training query embeddings (.npy)")
    train.add_argument("--opq", action="store_true", help="learn an OPQ rotation too")
    train.add_argument("--epochs", type=int, default=8)
    train.add_argument("--pseudo-queries", type=int, default=3000, help="corpus passages used as extra queries")
    train.add_argument("--loss", choices=["listnet", "margin-mse"], default="listnet")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=_vq_train)


def normalize_argv(argv: list[str]) -> list[str]:
    """``rkd index build sparse ...`` means ``rkd index build --type sparse ...``."""
    for i in range(len(argv) - 2):
        if argv[i:i + 3] == ["index", "build", "sparse"]:
            return [*argv[:i + 2], "--type", "sparse", *argv[i + 3:]]
    return argv


def _build_sparse(args) -> int:
    from retrieval_kd.data import load_collection
    from retrieval_kd.encoders.sparse import load_sparse_encoder, sparse_corpus_vectors
    from retrieval_kd.index.sparse import SparseIndex

    if not args.dataset or args.model == MINILM:
        raise ValueError("sparse indexes need --model (a SparseEncoder folder or MLM id) and --dataset")
    collection = load_collection(args.dataset)
    encoder = load_sparse_encoder(args.model)
    if args.max_seq_length:
        encoder.max_seq_length = args.max_seq_length
    vectors = sparse_corpus_vectors(args.model, collection.corpus, encoder.max_seq_length, encoder=encoder,
                                    windows=args.windows)
    tokenizer = encoder.tokenizer
    vocab = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    index = SparseIndex.build(vectors, collection.corpus.ids, prune=args.prune, vocab=vocab)
    index.save(args.output, {"encoder": args.model, "dataset": args.dataset, "prune": args.prune,
                             "max_seq_length": encoder.max_seq_length, "windows": args.windows})
    print(f"wrote {args.output} (sparse, {index.n_docs} documents, {index.nnz_per_doc():.1f} non-zeros each)")
    if args.export:
        out = Path(args.output) / ("rank_features.jsonl" if args.export == "rank-features" else "anserini.jsonl")
        n = index.export_rank_features(out) if args.export == "rank-features" else index.export_anserini(out)
        print(f"wrote {out}: {n} documents")
    return 0


def _build(args) -> int:
    from retrieval_kd.index.dense import build_faiss_index, save_index

    if args.type == "sparse":
        return _build_sparse(args)
    if args.type == "distill-vq":
        if not args.vq:
            raise ValueError("--type distill-vq needs --vq FOLDER (from `rkd vq train`)")
        from retrieval_kd.index.dense import load_index

        index, doc_ids, meta = load_index(args.vq)
        save_index(index, args.output, doc_ids, meta)
    else:
        doc_ids, emb, encoder = _encoded_corpus(args)
        index = build_faiss_index(args.type, emb, nlist=args.nlist, m=args.m)
        save_index(index, args.output, doc_ids, {"type": args.type, "encoder": encoder, "dataset": args.dataset,
                                                 "nlist": args.nlist, "m": args.m})
    print(f"wrote {args.output} ({args.type}, {index.ntotal} vectors)")
    return 0


def _vq_train(args) -> int:
    import numpy as np
    from safetensors.torch import save_file

    from retrieval_kd.index import export_faiss
    from retrieval_kd.index.dense import save_index
    from retrieval_kd.quantization import DistillVQConfig, train_distill_vq

    doc_ids, emb, encoder = _encoded_corpus(args)
    if args.queries:
        queries = np.load(args.queries)
    else:
        from retrieval_kd.data import load_collection
        from retrieval_kd.encoders import query_embeddings

        if not args.dataset:
            raise ValueError("give --dataset (its --split queries are the training queries) or --queries")
        queries = query_embeddings(args.model, load_collection(args.dataset).queries(args.split))
    cfg = DistillVQConfig(nlist=args.nlist, m=args.m, opq=args.opq, epochs=args.epochs,
                          pseudo_queries=args.pseudo_queries, loss=args.loss, seed=args.seed)
    result = train_distill_vq(emb, queries, cfg)
    index = export_faiss(result.module, lists=result.lists, codes=result.codes)
    meta = {"type": "distill-vq", "encoder": encoder, "dataset": args.dataset, "config": cfg.to_dict(),
            "history": result.history, "reference": "Xiao et al. 2022, Distill-VQ (SIGIR)"}
    folder = save_index(index, args.output, doc_ids, meta)
    save_file({k: v.detach().contiguous() for k, v in result.module.state_dict().items()},
              str(folder / "distill_vq.safetensors"))
    print(f"wrote {folder}: Distill-VQ (nlist={args.nlist}, m={args.m}, opq={args.opq}), "
          f"final loss {result.history[-1]['loss']:.5f}")
    return 0
