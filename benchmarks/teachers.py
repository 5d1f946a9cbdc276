"""Teachers as rerankers of BM25's top-100: nDCG@10 of each teacher and of their normalised ensembles.

Usage: python benchmarks/teachers.py [--datasets scifact trec-dl-2019-passage] [--teachers SPEC ...]

For each dataset the candidates are BM25's top-100 (no judged positives added: this is a reranking test);
every teacher scores them into a score store under experiments/bench-teachers/, so a rerun reuses the scores.
The equal-weight min-max ensemble of all members is reported, and so is an ensemble whose weights are fitted on
SciFact's *train* split (grid search for nDCG@10 on train candidates; test is never used for fitting). TREC DL
2019 has no training split here: its fitted row reuses the weights fitted on SciFact train.

``--fit-on-queries FILE ...`` adds a label-free row, ``ensemble_fitted_sources``: weights fitted on made-up queries
of SciFact's corpus (``rkd queries generate / crop / import`` output, with its provenance sidecar), each query's
source document taken as its one relevant document (the pipeline's ``teachers.fit_on: sources``). Their
candidates are BM25's top-k plus the source.

``--fit-ict`` adds another, ``ensemble_fitted_ict``: weights fitted on each dataset's own corpus by
:func:`retrieval_kd.teachers.ict_weights.fit_weights_ict` (sentences cut out of their documents; the pipeline's
``teachers.fit_on: ict``), ``--ict-queries`` of them, and records how much the fitted ensemble beats each member
on those ICT queries (mean nDCG@10 gain, paired t-test p: the pipeline's check of the teacher against the dense
student's start). ``--datasets`` takes registered names or BEIR folders.

Writes benchmarks/results/teachers.json: {dataset: {teacher: ndcg@10, ..., "ensemble": ndcg@10,
"ensemble_fitted": ndcg@10}}, and beside it teachers.meta.json with the weights, timings, command and hardware.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from retrieval_kd.data import load_collection
from retrieval_kd.data.formats import atomic_write
from retrieval_kd.eval import evaluate, to_markdown
from retrieval_kd.pipeline.config import collection_name
from retrieval_kd.teachers import (
    EnsembleTeacher,
    ScoreStore,
    fit_weights,
    fit_weights_ict,
    mine_candidates,
    parse_teacher,
)
from retrieval_kd.teachers.runner import score_candidates
from retrieval_kd.utils.hardware import hardware_info

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEACHERS = ["bm25", "splade:rkd-local/splade-tiny", "bi-encoder:sentence-transformers/all-MiniLM-L6-v2"]
SHORT = {"bm25": "bm25", "splade": "splade-tiny", "bi-encoder": "minilm"}


def short_name(teacher) -> str:
    model = teacher.config().get("model", "")
    if "mpnet" in str(model):
        return "mpnet"
    return SHORT.get(teacher.kind, teacher.name)


def score_split(collection, split: str, teachers, store_dir: Path, k: int) -> tuple[dict, dict]:
    """Score BM25 top-k candidates of a split with every teacher; returns per-teacher runs and timings."""
    candidates = mine_candidates(collection, split, k=k, sources=("bm25",), with_positives=False)
    runs, seconds = {}, {}
    for teacher in teachers:
        t0 = time.perf_counter()
        score_candidates(teacher, collection, candidates, store_dir, batch_queries=16)
        seconds[short_name(teacher)] = round(time.perf_counter() - t0, 1)
        with ScoreStore(store_dir) as store:
            runs[short_name(teacher)] = store.get(teacher.fingerprint, qids=list(candidates))
    return runs, seconds


def fit_on_sources(collection, files: list[Path], teachers, store_dir: Path, k: int, step: float) -> dict:
    """Weights fitted without labels: on made-up queries of ``collection``, each with its source as relevant."""
    from retrieval_kd.queries import read_query_set

    queries, sources = {}, {}
    for path in files:
        made = read_query_set(path, collection)
        queries.update(made.queries)
        sources.update(made.sources)
    qrels = {q: {doc: 1} for q, doc in sources.items()}
    candidates = mine_candidates(collection, None, k=k, sources=("bm25",), queries=queries, positives=qrels)
    runs = []
    for teacher in teachers:
        score_candidates(teacher, collection, candidates, store_dir, queries=queries, batch_queries=16)
        with ScoreStore(store_dir) as store:
            runs.append(store.get(teacher.fingerprint, qids=list(qrels)))
    weights, value = fit_weights(runs, qrels, step=step)
    logging.info("weights fitted on the sources of %d made-up queries: %s (nDCG@10 there %.4f)", len(qrels),
                 weights, value)
    return {"files": [str(f) for f in files], "queries": len(qrels), "candidates": f"bm25 top-{k} + the source",
            "weights": weights, "ndcg@10_on_sources": value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["scifact", "trec-dl-2019-passage"])
    parser.add_argument("--teachers", nargs="+", default=DEFAULT_TEACHERS)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--fit-step", type=float, default=0.1)
    parser.add_argument("--fit-on-queries", nargs="+", type=Path, default=[],
                        help="made-up SciFact queries (with their sidecar): also fit the weights on their sources")
    parser.add_argument("--fit-ict", action="store_true",
                        help="also fit the weights on each dataset's corpus by the inverse cloze task (no label)")
    parser.add_argument("--ict-queries", type=int, default=300)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "teachers.json")
    parser.add_argument("--work", type=Path, default=ROOT / "experiments" / "bench-teachers")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("huggingface_hub", "sentence_transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    teachers = [parse_teacher(spec) for spec in args.teachers]
    names = [short_name(t) for t in teachers]

    # weights fitted on SciFact train (never on a test split)
    sci = load_collection("scifact")
    train_runs, _ = score_split(sci, "train", teachers, args.work / "scifact" / "scores", args.top_k)
    fitted, train_value = fit_weights([train_runs[n] for n in names], sci.qrels("train"), step=args.fit_step)
    logging.info("weights fitted on scifact train: %s (nDCG@10 %.4f)", dict(zip(names, fitted)), train_value)

    from_sources = fit_on_sources(sci, args.fit_on_queries, teachers, args.work / "scifact" / "scores-made-up",
                                  args.top_k, args.fit_step) if args.fit_on_queries else None
    results, tables, details = {}, {}, {}
    for ref in args.datasets:
        collection = load_collection(ref)
        name = collection_name(ref)
        conv = collection.conventions_for("test")
        teachers = [parse_teacher(spec) for spec in args.teachers]  # fresh per corpus: their caches key by doc id
        runs, seconds = score_split(collection, "test", teachers, args.work / name / "scores", args.top_k)
        qrels = collection.qrels("test")

        def ndcg(run, qrels=qrels, conv=conv):
            return round(evaluate(qrels, run, ["ndcg@10"], conv.relevance_level,
                                  conv.ignore_identical_ids).scores["ndcg@10"], 4)

        row = {n: ndcg(runs[n]) for n in names}
        row["ensemble"] = ndcg(EnsembleTeacher(teachers).combine([runs[n] for n in names]))
        row["ensemble_fitted"] = ndcg(EnsembleTeacher(teachers, fitted).combine([runs[n] for n in names]))
        if from_sources:
            row["ensemble_fitted_sources"] = ndcg(EnsembleTeacher(teachers, from_sources["weights"]).combine(
                [runs[n] for n in names]))
        details[name] = {"seconds": seconds, "queries": len(qrels), "candidates": f"bm25 top-{args.top_k}",
                         "fitted_weights": dict(zip(names, fitted)),
                         "fitted_on": "scifact train" + ("" if name == "scifact" else " (transferred)")}
        if args.fit_ict:
            t0 = time.perf_counter()
            ict = fit_weights_ict(collection, teachers, args.ict_queries, step=args.fit_step)
            row["ensemble_fitted_ict"] = ndcg(EnsembleTeacher(teachers, ict.weights).combine([runs[n] for n in names]))
            details[name]["ict"] = {"weights": dict(zip(names, ict.weights)), "queries": ict.queries,
                                    "ndcg@10_on_ict": ict.ndcg, "members_ndcg@10_on_ict": dict(zip(names, ict.members_ndcg)),
                                    "gain_over_members_on_ict": {n: dict(zip(("gain", "p"), ict.gain_over(i)))
                                                                 for i, n in enumerate(names)},
                                    "seconds": round(time.perf_counter() - t0, 1)}
        results[name] = row
        tables[name] = row
    print(to_markdown({f"{n} (nDCG@10)": r for n, r in tables.items()}))
    meta = {"details": details, "hardware": hardware_info(), "command": "python benchmarks/teachers.py " + " ".join(sys.argv[1:]),
            "teachers": args.teachers, "fitted_weights": dict(zip(names, fitted)), "fit_train_ndcg@10": train_value,
            "fitted_on_sources": from_sources and {**from_sources, "weights": dict(zip(names, from_sources["weights"]))}}
    with atomic_write(args.output) as fh:
        json.dump(results, fh, indent=1)
    with atomic_write(args.output.with_suffix(".meta.json")) as fh:
        json.dump(meta, fh, indent=1)
    print(f"results: {args.output}")


if __name__ == "__main__":
    main()
