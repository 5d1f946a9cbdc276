"""``rkd rerank``: rescore a run's top documents with any teacher or ensemble into a new run."""

from __future__ import annotations

import argparse
from pathlib import Path

from retrieval_kd.cli.argtypes import non_negative_float, output_file, positive_int


def add_parser(sub) -> None:
    from retrieval_kd.cli.search_cmd import add_query_source

    p = sub.add_parser(
        "rerank", help="rerank a run's top --depth documents per query with teachers (or their ensemble)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  rkd rerank --run runs/scifact-bm25.run --teacher cross-encoder:cross-encoder/ms-marco-MiniLM-L6-v2 "
        "--dataset scifact --split test --depth 100 --output runs/scifact-ce.run\n"
        "  rkd rerank --run runs/bm25.run --teacher bm25 --teacher bi-encoder:sentence-transformers/all-MiniLM-L6-v2 "
        "--ensemble minmax --dataset scifact --queries my-queries.tsv --output runs/ens.run\n"
        "teacher specs as for rkd teach: bm25 | bi-encoder:MODEL | cross-encoder:MODEL | splade:MODEL | "
        "llm-first:MODEL | llm-qlm:MODEL | llm-yesno:MODEL")
    p.add_argument("--run", required=True, type=Path, help="the TREC run to rerank")
    p.add_argument("--teacher", required=True, action="append", help="teacher spec; several need --ensemble")
    p.add_argument("--ensemble", choices=["minmax", "zscore"], default=None,
                   help="rerank with the normalised ensemble of all --teacher members")
    p.add_argument("--weights", type=non_negative_float, nargs="+", default=None,
                   help="ensemble weights, one per --teacher (default equal)")
    p.add_argument("--dataset", required=True, help="the dataset whose corpus holds the run's documents")
    add_query_source(p, required=False)
    p.add_argument("--depth", type=positive_int, default=100, help="documents per query reranked")
    p.add_argument("--store", type=Path, default=None,
                   help="keep the scores in this score store (resumable; default a temporary one)")
    p.add_argument("--batch-queries", type=positive_int, default=8)
    p.add_argument("--output", required=True, type=output_file)
    p.set_defaults(func=_rerank)


def _rerank(args) -> int:
    from retrieval_kd.cli.search_cmd import queries_of
    from retrieval_kd.cli.teach_cmd import parse_teachers
    from retrieval_kd.data import load_collection, read_run, write_run
    from retrieval_kd.errors import ConfigError
    from retrieval_kd.search import rerank
    from retrieval_kd.teachers import EnsembleTeacher
    from retrieval_kd.utils.progress import progress_enabled

    teachers = parse_teachers(args)
    if len(teachers) > 1 and not args.ensemble:
        raise ConfigError(f"{len(teachers)} --teacher specs: give --ensemble minmax|zscore to rerank with their "
                          "ensemble, or one --teacher")
    teacher = EnsembleTeacher(teachers, args.weights, args.ensemble) if args.ensemble else teachers[0]
    collection = load_collection(args.dataset)
    queries = queries_of(args, collection) if (args.split or args.queries) else None
    run = rerank(read_run(args.run), teacher, collection, args.depth, queries, args.store, args.batch_queries,
                 progress_enabled())
    write_run(run, args.output, tag="rerank")
    print(f"wrote {args.output}: {len(run)} queries, top-{args.depth} reranked by {teacher.name}")
    return 0
