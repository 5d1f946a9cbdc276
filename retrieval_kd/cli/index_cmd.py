"""``rkd index build`` and ``rkd vq train``: dense ANN indexes (FAISS baselines and Distill-VQ)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from retrieval_kd.cli.argtypes import non_negative_int, positive_int
from retrieval_kd.encoders.backends import ENCODING_CHOICES

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _collection(args):
    """``--dataset``'s collection, loaded once per command (the doc-id check, the corpus identity and the encoding
    all need it)."""
    from retrieval_kd.data import load_collection

    if getattr(args, "_collection", None) is None:
        args._collection = load_collection(args.dataset)
    return args._collection


def _load_matrix(path: Path, flag: str):
    """A 2-D ``.npy`` matrix (memory-mapped), or an error naming the file and the flag."""
    import numpy as np

    try:
        matrix = np.load(path, mmap_mode="r")
    except (ValueError, EOFError) as exc:  # not an .npy file (numpy never unpickles here)
        raise ValueError(f"{path}: not a NumPy .npy matrix ({exc}); {flag} takes one (np.save)") from None
    if getattr(matrix, "ndim", 0) != 2:
        raise ValueError(f"{path}: {flag} must be a 2-D matrix (one row per text), got shape "
                         f"{getattr(matrix, 'shape', None)}")
    if not np.issubdtype(matrix.dtype, np.number):
        raise ValueError(f"{path}: {flag} must hold numbers, not {matrix.dtype}")
    for start in range(0, matrix.shape[0], 1 << 16):  # in blocks: the file stays memory-mapped
        bad = np.flatnonzero(~np.isfinite(np.asarray(matrix[start:start + (1 << 16)], dtype=np.float64)).all(axis=1))
        if bad.size:
            raise ValueError(f"{path}: row {start + int(bad[0])} of {flag} holds NaN or infinite values "
                             f"({bad.size} such rows in rows {start}..{start + (1 << 16) - 1}); check the encoder")
    return matrix


def _encoded_corpus(args):
    """(doc_ids, embeddings, encoder id) from --embeddings/--doc-ids or from --model over --dataset's corpus."""
    import numpy as np

    if args.embeddings:
        if not args.doc_ids:
            raise ValueError("--embeddings needs --doc-ids (a JSON list of the rows' doc ids)")
        emb = _load_matrix(args.embeddings, "--embeddings")
        try:
            doc_ids = json.loads(Path(args.doc_ids).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{args.doc_ids}: not JSON ({exc}); --doc-ids is a JSON list of doc ids") from None
        if not isinstance(doc_ids, list):
            raise ValueError(f"{args.doc_ids}: --doc-ids must hold a JSON list of doc ids, not a "
                             f"{type(doc_ids).__name__}")
        if len(doc_ids) != emb.shape[0]:
            raise ValueError(f"{args.doc_ids}: {len(doc_ids)} ids for {emb.shape[0]} rows of {args.embeddings}")
        _check_doc_ids(doc_ids, args)
        return doc_ids, np.asarray(emb, dtype=np.float32), args.model  # None: the sidecar says the encoder is unknown
    from retrieval_kd.encoders import corpus_embeddings

    if not args.dataset:
        raise ValueError("give --dataset (its corpus is encoded with --model), or --embeddings with --doc-ids")
    collection = _collection(args)
    model = args.model or MINILM
    return collection.corpus.ids, np.asarray(corpus_embeddings(model, collection.corpus, encoding=args.encoding)), model


def _check_doc_ids(doc_ids: list, args) -> None:
    """--doc-ids must be distinct non-empty strings without whitespace, and the ids of --dataset's corpus if given
    (an index every later search refuses, or one of another corpus, is not written)."""
    for i, did in enumerate(doc_ids):
        if not isinstance(did, str) or not did or any(c.isspace() for c in did):
            raise ValueError(f"{args.doc_ids}: entry {i} ({did!r}) is not a doc id (a non-empty string without "
                             "whitespace)")
    if len(set(doc_ids)) != len(doc_ids):
        seen = set()
        dup = next(d for d in doc_ids if d in seen or seen.add(d))
        raise ValueError(f"{args.doc_ids}: doc id {dup!r} appears more than once")
    if args.dataset:

        corpus = _collection(args).corpus
        found = corpus.has(doc_ids)
        if not found.all():
            missing = [d for d, ok in zip(doc_ids, found) if not ok]
            raise ValueError(f"{args.doc_ids}: {len(missing)} of {len(doc_ids)} doc ids are not in {corpus.path} "
                             f"(e.g. {missing[0]!r}); these embeddings belong to another corpus")


def _corpus_meta(args) -> dict:
    """The corpus identity an index records: that of --dataset (also for --embeddings, whose ids were checked
    against it); none for bare --embeddings without --dataset (the folder says so, ``corpus_key`` null)."""
    if not args.dataset:
        return {"corpus_key": None}
    from retrieval_kd.index.dense import corpus_identity

    return corpus_identity(_collection(args).corpus)


def _common(p) -> None:
    p.add_argument("--dataset", help="corpus to index (registered name, BEIR folder, irds:...)")
    p.add_argument("--model", default=None, help=f"SentenceTransformer that encodes the corpus (default {MINILM}); "
                   "with --embeddings, the model that made them (recorded, so queries are embedded alike)")
    p.add_argument("--embeddings", type=Path, help="precomputed corpus embeddings (.npy) instead of --model")
    p.add_argument("--doc-ids", type=Path, help="JSON list of doc ids, one per row of --embeddings")
    p.add_argument("--nlist", type=positive_int, default=64, help="IVF lists (at most the number of vectors)")
    p.add_argument("--m", type=positive_int, default=48,
                   help="PQ sub-quantizers = bytes per vector at 8 bits; must divide the embedding dimension")
    p.add_argument("--encoding", choices=ENCODING_CHOICES, default="torch",
                   help="the backend that encodes the corpus with --model (torch: fp32 sentence-transformers; "
                        "torch-bf16, onnx, onnx-int8, openvino; auto: by the CPU's instruction sets)")
    p.add_argument("--output", type=Path, required=True, help="index folder (e.g. indexes/scifact-ivfpq48)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --output even if it is not an index folder retrieval-kd wrote (never needed to "
                        "rebuild an index: those are replaced whole)")


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
    build.add_argument("--prune", type=positive_int, default=None, help="sparse: keep each document's K largest weights")
    build.add_argument("--max-seq-length", type=positive_int, default=None,
                       help="sparse: document tokens per window (default: the model's max_seq_length)")
    build.add_argument("--windows", type=positive_int, default=1,
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
    train.add_argument("--epochs", type=positive_int, default=8)
    train.add_argument("--pseudo-queries", type=non_negative_int, default=3000, help="corpus passages used as extra queries")
    train.add_argument("--loss", choices=["listnet", "margin-mse"], default="listnet")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--keep-checkpoints", action="store_true",
                       help="keep OUTPUT-checkpoints (written after every epoch; a rerun of a killed run resumes "
                            "from the newest) once the index is written; by default they are removed then")
    train.set_defaults(func=_vq_train)


def normalize_argv(argv: list[str]) -> list[str]:
    """``rkd index build sparse ...`` means ``rkd index build --type sparse ...``."""
    for i in range(len(argv) - 2):
        if argv[i:i + 3] == ["index", "build", "sparse"]:
            return [*argv[:i + 2], "--type", "sparse", *argv[i + 3:]]
    return argv


def _build_sparse(args) -> int:
    from retrieval_kd.index.sparse import build_sparse_index

    if not args.dataset or not args.model:
        raise ValueError("sparse indexes need --model (a SparseEncoder folder or MLM id) and --dataset")
    index = build_sparse_index(args.model, _collection(args).corpus, args.output, prune=args.prune,
                               max_seq_length=args.max_seq_length, windows=args.windows, dataset=args.dataset,
                               overwrite=args.overwrite, encoding=args.encoding)
    print(f"wrote {args.output} (sparse, {index.n_docs} documents, {index.nnz_per_doc():.1f} non-zeros each)")
    if args.export:
        out = Path(args.output) / ("rank_features.jsonl" if args.export == "rank-features" else "anserini.jsonl")
        n = index.export_rank_features(out) if args.export == "rank-features" else index.export_anserini(out)
        print(f"wrote {out}: {n} documents")
    return 0


def _build(args) -> int:
    from retrieval_kd.index.dense import build_faiss_index, save_index
    from retrieval_kd.utils.fs import check_output_folder

    if args.type == "sparse":
        return _build_sparse(args)
    check_output_folder(args.output, "dense-index", args.overwrite)  # before the corpus is encoded
    if args.type == "distill-vq":
        if not args.vq:
            raise ValueError("--type distill-vq needs --vq FOLDER (from `rkd vq train`)")
        from retrieval_kd.index.dense import load_index

        index, doc_ids, meta = load_index(args.vq)
        save_index(index, args.output, doc_ids, meta, overwrite=args.overwrite)
    else:
        doc_ids, emb, encoder = _encoded_corpus(args)
        index = build_faiss_index(args.type, emb, nlist=args.nlist, m=args.m)
        save_index(index, args.output, doc_ids, {"type": args.type, "encoder": encoder, "dataset": args.dataset,
                                                 "nlist": args.nlist, "m": args.m, **_corpus_meta(args)},
                   overwrite=args.overwrite)
    print(f"wrote {args.output} ({args.type}, {index.ntotal} vectors)")
    return 0


def _vq_train(args) -> int:
    import numpy as np
    from safetensors.torch import save_file

    from retrieval_kd.index import export_faiss
    from retrieval_kd.index.dense import save_index
    from retrieval_kd.quantization import DistillVQConfig, train_distill_vq
    from retrieval_kd.utils.fs import check_output_folder

    check_output_folder(args.output, "dense-index", args.overwrite)  # before encoding and training
    doc_ids, emb, encoder = _encoded_corpus(args)
    from retrieval_kd.index.dense import check_index_params

    check_index_params("distill-vq", emb.shape[0], emb.shape[1], args.nlist, args.m)  # before training
    if args.queries:
        queries = np.asarray(_load_matrix(args.queries, "--queries"))
        if queries.shape[1] != emb.shape[1]:
            raise ValueError(f"{args.queries}: --queries has dimension {queries.shape[1]}, the corpus embeddings "
                             f"{emb.shape[1]}; embed both with the same model")
    else:
        from retrieval_kd.encoders import query_embeddings

        if not args.dataset:
            raise ValueError("give --dataset (its --split queries are the training queries) or --queries")
        queries = query_embeddings(encoder or MINILM, _collection(args).queries(args.split),
                                   encoding=args.encoding)
    cfg = DistillVQConfig(nlist=args.nlist, m=args.m, opq=args.opq, epochs=args.epochs,
                          pseudo_queries=args.pseudo_queries, loss=args.loss, seed=args.seed)
    checkpoints = args.output.with_name(f"{args.output.name}-checkpoints")
    result = train_distill_vq(emb, queries, cfg, checkpoint_dir=checkpoints)
    index = export_faiss(result.module, lists=result.lists, codes=result.codes)
    meta = {"type": "distill-vq", "encoder": encoder, "dataset": args.dataset, "config": cfg.to_dict(),
            "history": result.history, "reference": "Xiao et al. 2022, Distill-VQ (SIGIR)", **_corpus_meta(args)}
    state = {k: v.detach().contiguous() for k, v in result.module.state_dict().items()}
    folder = save_index(index, args.output, doc_ids, meta, overwrite=args.overwrite,
                        extra=lambda tmp: save_file(state, str(tmp / "distill_vq.safetensors")))
    print(f"wrote {folder}: Distill-VQ (nlist={args.nlist}, m={args.m}, opq={args.opq}), "
          f"final loss {result.history[-1]['loss']:.5f}")
    if not args.keep_checkpoints:
        import shutil

        shutil.rmtree(checkpoints, ignore_errors=True)
    return 0
