"""A pipeline experiment's dense student mixed with the model it started from (WiSE-FT, the students' start_weight).

Usage (after `rkd pipeline CONFIG [--dataset FOLDER]`):
  python benchmarks/wise_ft.py experiments/label-free-cranfield --start-weights 0.5
  python benchmarks/wise_ft.py experiments/label-free-trec-dl-2019-passage-c5b8fe --start-weights 0 0.5 1

For each weight W the experiment's trained dense student (``models/dense``) is mixed with its start
(``W * start + (1 - W) * trained``, :func:`retrieval_kd.students.interpolate.interpolate_student`; the folder goes to
``<experiment>/wise-ft/sw<W>``, outside the pipeline's own folders) and searched exactly over each eval set's
corpus with the pipeline's encoding and ``max_seq_length``. nDCG@10 and Recall@100 on the eval split, with two-sided
paired t-tests (per-query nDCG@10) against the pipeline's own runs of the start (``dense-initial``), the trained
student (``dense-flat``) and BM25. ``W = 0`` reproduces the trained student and ``W = 1`` the start (a check of
the mixing; ties may reorder). No training and no selection: the weights are the caller's. Writes
``benchmarks/results/wise_ft.json`` (merged: one entry per experiment folder name).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", type=Path, help="a finished pipeline experiment folder with a dense student")
    p.add_argument("--start-weights", type=float, nargs="+", default=[0.5], metavar="W")
    p.add_argument("--encoding", default="auto", help="as the pipeline's `encoding` (auto: what it picks)")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "wise_ft.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("sentence_transformers", "transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from scipy.stats import ttest_rel

    from retrieval_kd.data import load_collection, read_run
    from retrieval_kd.data.formats import atomic_write
    from retrieval_kd.encoders.backends import resolve_encoding
    from retrieval_kd.eval import evaluate
    from retrieval_kd.search.dense import dense_search
    from retrieval_kd.students.interpolate import interpolate_student, recorded_start
    from retrieval_kd.utils.hardware import hardware_info

    exp = args.experiment
    student = exp / "models" / "dense"
    if not (student / "rkd_training.json").is_file() or not (exp / "config.json").is_file():
        raise SystemExit(f"{exp}: no finished pipeline experiment with a dense student (models/dense)")
    trained = json.loads((student / "rkd_training.json").read_text())["config"]
    start, max_len = recorded_start(student), int(trained["max_seq_length"])
    if trained.get("start_weight"):
        raise SystemExit(f"{exp}: its student was already saved mixed (start_weight {trained['start_weight']})")
    config = json.loads((exp / "config.json").read_text())
    encoding = resolve_encoding(args.encoding, "dense", model=str(student))
    entry = {"experiment": str(exp), "start": start, "encoding": str(encoding.backend), "max_seq_length": max_len,
             "hardware": hardware_info(), "eval": {}}
    for ev in config["eval"]:
        collection = load_collection(ev["dataset"])
        split = ev.get("split", "test")
        queries, qrels = collection.queries(split), collection.qrels(split)
        conv = collection.conventions_for(split)
        runs_dir = exp / "runs" / ev["name"]

        def scored(run, qrels=qrels, conv=conv):
            result = evaluate(qrels, run, ["ndcg@10", "recall@100"], conv.relevance_level, conv.ignore_identical_ids)
            return result.scores, result.per_query["ndcg@10"]

        base = {name: scored(read_run(runs_dir / f"{name}.run")) for name in ("dense-initial", "dense-flat", "bm25")}
        rows = {name: {k: round(v, 4) for k, v in s.items()} for name, (s, _) in base.items()}
        for weight in args.start_weights:
            t0 = time.perf_counter()
            folder = exp / "wise-ft" / f"sw{weight:g}"
            interpolate_student(start, student, weight, folder)  # kept when it mixes these weights already
            scores, per_q = scored(dense_search(str(folder), collection, queries, 1000, max_len, encoding=encoding))
            row = {k: round(v, 4) for k, v in scores.items()}
            for name, (_, other) in base.items():
                common = sorted(set(per_q) & set(other))
                row[f"p_vs_{name}"] = round(float(ttest_rel([per_q[q] for q in common],
                                                            [other[q] for q in common]).pvalue), 4)
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows[f"sw{weight:g}"] = row
            print(json.dumps({exp.name: {f"sw{weight:g}": row}}), flush=True)
        entry["eval"][ev["name"]] = rows
    results = json.loads(args.output.read_text()) if args.output.exists() else {}
    results[exp.name] = entry
    with atomic_write(args.output) as fh:
        json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
