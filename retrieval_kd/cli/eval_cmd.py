"""``rkd eval``: evaluate TREC run files with ranx under the dataset's conventions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate run files (ranx); several runs get paired significance tests against the first",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  rkd eval --dataset trec-dl-2019-passage --split test --run bm25base_p.run.gz\n"
        "  rkd eval --dataset scifact --split test --run bm25.run --run dense.run --metrics ndcg@10 recall@100",
    )
    p.add_argument("--dataset", required=True, help="registered name, BEIR folder, or irds:<id>")
    p.add_argument("--split", required=True)
    p.add_argument("--run", required=True, action="append", type=Path, help="TREC run file; repeat to compare")
    p.add_argument("--metrics", nargs="+", default=None, help="ranx metric names (default: the dataset's)")
    p.add_argument("--rel-level", type=int, default=None,
                   help="minimum grade binary measures count as relevant (default: the dataset's; TREC DL: 2)")
    p.add_argument("--ignore-identical-ids", action=argparse.BooleanOptionalAction, default=None,
                   help="drop each query's own id from its results, as BEIR does for ArguAna and Quora (default: the "
                        "dataset's convention; a BEIR folder: when its queries are its documents)")
    p.add_argument("--output-json", type=Path, default=None,
                   help="mean scores as JSON ({metric: value}; {run: {metric: value}} for several runs)")
    p.add_argument("--per-query", type=Path, default=None, help="per-query scores as JSON")
    p.add_argument("--stat-test", default="student", choices=["student", "fisher", "tukey"])
    p.set_defaults(func=_eval)


def _eval(args) -> int:
    from retrieval_kd.data import load_collection, read_run
    from retrieval_kd.data.formats import atomic_write
    from retrieval_kd.errors import ConfigError
    from retrieval_kd.eval import check_run, compare, evaluate, to_markdown, validate_metrics

    if args.metrics:
        validate_metrics(args.metrics)  # before loading anything
    collection = load_collection(args.dataset)
    conv = collection.conventions
    metrics = validate_metrics(args.metrics or list(conv.metrics))
    level = args.rel_level if args.rel_level is not None else conv.relevance_level
    ignore_ids = args.ignore_identical_ids
    if ignore_ids is None:  # the dataset's rule (a BEIR folder's: decided from its data)
        ignore_ids = collection.conventions_for(args.split).ignore_identical_ids
    qrels = collection.qrels(args.split)
    top = max((g for docs in qrels.values() for g in docs.values()), default=0)
    if level > top:  # every binary measure would be 0 without a word
        raise ConfigError(f"--rel-level {level}: no judgement of {collection.name}/{args.split} reaches it (highest "
                          f"grade {top}); binary measures would all be 0")
    runs, seen = {}, set()
    for path in args.run:
        if path.resolve() in seen:
            raise ConfigError(f"--run {path} is given twice")
        seen.add(path.resolve())
        label = path.name if path.name not in runs else str(path)  # two runs of the same name stay two
        runs[label] = read_run(path)
        check_run(runs[label], qrels, collection.corpus, source=str(path))
    results = {name: evaluate(qrels, run, metrics, level, ignore_ids) for name, run in runs.items()}
    own = "dropped from their results unless judged relevant" if ignore_ids else "kept in their results"
    print(f"{collection.name} / {args.split}: {next(iter(results.values())).n_queries} judged queries, "
          f"binary relevance >= {level}, queries' own ids {own}")
    print(to_markdown({name: r.scores for name, r in results.items()}, metrics))
    if len(runs) > 1:
        report = compare(qrels, runs, metrics, level, stat_test=args.stat_test, ignore_identical_ids=ignore_ids)
        print()
        print(f"paired {args.stat_test} t-test (p < 0.05), superscripts name the runs a run beats:")
        print(report)
    if args.output_json:
        out = next(iter(results.values())).scores if len(runs) == 1 else {n: r.scores for n, r in results.items()}
        with atomic_write(args.output_json) as fh:
            json.dump(out, fh, indent=1)
    if args.per_query:
        with atomic_write(args.per_query) as fh:
            json.dump({n: r.per_query for n, r in results.items()}, fh, indent=1)
    return 0
