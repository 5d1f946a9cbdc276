"""``rkd teach``: mine candidates, score them with teachers into a store, export the scores."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from retrieval_kd.cli.argtypes import non_negative_float, output_file, positive_float, positive_int

EPILOG = """examples:
  rkd teach mine --dataset scifact --split train --top-k 100 --output runs/scifact-train-cands.run
  rkd teach --dataset scifact --split train --candidates runs/scifact-train-cands.run \\
      --teacher bm25 --teacher bi-encoder:sentence-transformers/all-MiniLM-L6-v2 --ensemble minmax \\
      --store experiments/scifact/scores
  rkd teach export --store experiments/scifact/scores --teacher ensemble --dataset scifact --split train \\
      --format tsv --out experiments/scifact/margins.tsv
  rkd teach mine --dataset scifact --queries q.jsonl --output runs/gen-cands.run   # queries from rkd queries
  rkd teach --dataset scifact --queries q.jsonl --candidates runs/gen-cands.run --teacher bm25 --store S
teacher specs: bm25 | bi-encoder:MODEL | cross-encoder:MODEL | splade:MODEL | llm-first:MODEL |
  llm-qlm:MODEL | llm-yesno:MODEL, options appended as ,key=value (e.g. llm-first:M,window=20,stride=10)
under torchrun --nproc_per_node N each rank scores its shard; rank 0 merges them into the store."""

_ACTIONS = ("score", "mine", "export")


def add_parser(sub) -> None:
    p = sub.add_parser("teach", help="score candidates with teachers into a resumable store; mine; export",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    action = p.add_subparsers(dest="action", metavar="ACTION")
    score = action.add_parser("score", help="(default) score candidates with teachers",
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    score.add_argument("--dataset", required=True)
    score.add_argument("--split", default=None, help="(not needed: the candidates name the queries)")
    score.add_argument("--candidates", required=True, type=Path, help="TREC run of candidates (rkd teach mine)")
    score.add_argument("--queries", type=Path, default=None,
                       help="the query texts are those of this query set (rkd queries), not the dataset's")
    score.add_argument("--teacher", required=True, action="append", help="teacher spec; repeat for several")
    score.add_argument("--store", required=True, type=Path, help="score store folder")
    score.add_argument("--ensemble", choices=["minmax", "zscore"], default=None,
                       help="also store the normalised ensemble of all --teacher members")
    score.add_argument("--weights", type=non_negative_float, nargs="+", default=None, help="ensemble weights (default equal)")
    score.add_argument("--scale", type=positive_float, default=1.0, help="ensemble score scale")
    score.add_argument("--batch-queries", type=positive_int, default=8)
    score.set_defaults(func=_score)
    mine = action.add_parser("mine", help="top-k candidates (BM25 and/or dense) plus judged positives")
    mine.add_argument("--dataset", required=True)
    mine.add_argument("--split", default=None, help="mine for the queries judged in this split")
    mine.add_argument("--queries", type=Path, default=None,
                      help="or for a query set made by rkd queries (its source documents are the positives added)")
    mine.add_argument("--top-k", type=positive_int, default=100)
    mine.add_argument("--source", nargs="+", default=["bm25"], choices=["bm25", "dense"])
    mine.add_argument("--dense-model", default="sentence-transformers/all-MiniLM-L6-v2")
    mine.add_argument("--no-positives", action="store_true", help="do not add judged positives")
    mine.add_argument("--output", required=True, type=output_file)
    mine.set_defaults(func=_mine)
    export = action.add_parser("export", help="export stored scores: tsv (Margin-MSE pairs), jsonl (n-tuples), hf")
    export.add_argument("--store", required=True, type=Path)
    export.add_argument("--teacher", required=True, help="teacher name or fingerprint in the store")
    export.add_argument("--dataset", required=True, help="for judged positives (and texts, for hf)")
    export.add_argument("--split", required=True)
    export.add_argument("--format", required=True, choices=["tsv", "jsonl", "hf"])
    export.add_argument("--out", required=True, type=Path)
    export.add_argument("--max-negatives", type=positive_int, default=None)
    export.add_argument("--overwrite", action="store_true",
                        help="hf: replace --out even if it is not a dataset folder retrieval-kd wrote")
    export.set_defaults(func=_export)
    listing = action.add_parser("list", help="teachers in a store, with pair counts")
    listing.add_argument("--store", required=True, type=Path)
    listing.set_defaults(func=_list)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def normalize_argv(argv: list[str]) -> list[str]:
    """``rkd teach --dataset ...`` means ``rkd teach score --dataset ...``."""
    commands = [i for i, a in enumerate(argv) if not a.startswith("-")]
    if not commands or argv[commands[0]] != "teach":
        return argv
    i = commands[0]
    if i + 1 < len(argv) and argv[i + 1].startswith("--") and argv[i + 1] != "--help":
        return [*argv[: i + 1], "score", *argv[i + 1:]]
    return argv


def parse_teachers(args) -> list:
    """The ``--teacher`` specs as teachers, with ``--weights`` checked against them and ``--ensemble`` (``rkd
    teach``, ``rkd rerank``); a bad spec fails before anything is read."""
    from retrieval_kd.teachers import parse_teacher

    teachers = [parse_teacher(spec) for spec in args.teacher]
    if args.weights and not args.ensemble:
        raise ValueError("--weights needs --ensemble (they weight the ensemble's members)")
    if args.weights and len(args.weights) != len(teachers):
        raise ValueError(f"--weights has {len(args.weights)} values for {len(teachers)} --teacher members")
    return teachers


def _score(args) -> int:
    from retrieval_kd.data import load_collection, read_run
    from retrieval_kd.teachers import EnsembleTeacher, score_candidates
    from retrieval_kd.teachers.runner import distributed_context
    from retrieval_kd.utils.progress import progress_enabled

    teachers = parse_teachers(args)
    collection = load_collection(args.dataset)
    candidates = read_run(args.candidates)
    queries = _query_set(args, collection).queries if args.queries else None
    if args.ensemble:
        teachers = [EnsembleTeacher(teachers, args.weights, args.ensemble, args.scale)]
    rank, _ = distributed_context()
    for teacher in teachers:
        summary = score_candidates(teacher, collection, candidates, args.store, queries,
                                   batch_queries=args.batch_queries, show_progress=progress_enabled())
        if rank == 0:
            print(json.dumps(summary))
    return 0


def _query_set(args, collection):
    from retrieval_kd.queries import read_query_set

    return read_query_set(args.queries, collection)


def _mine(args) -> int:
    from retrieval_kd.data import load_collection, write_run
    from retrieval_kd.teachers import mine_candidates

    if (args.split is None) == (args.queries is None):
        raise ValueError("rkd teach mine needs --split (judged queries) or --queries (a query set), one of them")
    collection = load_collection(args.dataset)
    queries = positives = None
    if args.queries:
        made = _query_set(args, collection)
        queries, positives = made.queries, {q: {d: 1} for q, d in made.sources.items()}
    run = mine_candidates(collection, args.split, args.top_k, args.source, args.dense_model, not args.no_positives,
                          queries=queries, positives=positives)
    write_run(run, args.output, tag="candidates")
    print(f"wrote {args.output}: {len(run)} queries, {sum(len(v) for v in run.values())} candidates")
    return 0


def _export(args) -> int:
    from retrieval_kd.data import load_collection
    from retrieval_kd.teachers import ScoreStore
    from retrieval_kd.teachers.export import export_jsonl, export_tsv, to_hf_dataset

    collection = load_collection(args.dataset)
    qrels = collection.qrels(args.split)
    level = collection.conventions.relevance_level
    with ScoreStore(args.store) as store:
        fingerprint = store.resolve(args.teacher)
        run = store.get(fingerprint, qids=list(qrels))
    if not run:  # before anything is written
        raise ValueError(f"{args.store}: teacher {fingerprint} has no scores for the queries of "
                         f"{args.dataset}/{args.split}; was the store scored on this dataset and split?")
    if args.format == "tsv":
        n = export_tsv(run, qrels, args.out, level, args.max_negatives)
    elif args.format == "jsonl":
        n = export_jsonl(run, qrels, args.out, level, args.max_negatives)
    else:
        n = to_hf_dataset(run, qrels, collection, level=level, max_negatives=args.max_negatives, path=args.out,
                          overwrite=args.overwrite).num_rows
    print(f"wrote {args.out}: {n} rows ({args.format}) from {fingerprint}")
    return 0


def _list(args) -> int:
    from retrieval_kd.teachers import ScoreStore

    with ScoreStore(args.store) as store:
        for fp, t in store.teachers().items():
            print(f"{fp}  {t['name']}  pairs={store.count(fp)}  queries={len(store.done_queries(fp))}")
    return 0
