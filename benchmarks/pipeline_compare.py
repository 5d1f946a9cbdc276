"""Finished runs of one pipeline config on the same collection, compared: nDCG@10 and paired t-tests.

Usage (after `rkd pipeline CONFIG --dataset FOLDER` twice, the second with a changed setting; or one run alone):
  python benchmarks/pipeline_compare.py experiments/label-free-cisi-equal experiments/label-free-cisi-5c4f51 \
      --labels equal ict --output benchmarks/results/label_free.ict-pipeline.json
  python benchmarks/pipeline_compare.py experiments/label-free-cranfield-d81055 --labels ict

Reads each experiment's run files of its (single) eval set: ``bm25``, ``dense-initial`` (the start, the same in
both when nothing before training changed its settings), ``dense-flat`` (the student), ``ensemble`` (the
teacher reranking BM25's top-k) and ``sparse-inference-free``; evaluates them with ranx on the eval split and
gives two-sided paired t-tests over the per-query nDCG@10: each student against its start and against BM25, the
second experiment's student and teacher against the first's, and with ``--seed-mean`` (two seeds of one recipe)
the mean of the two students, query by query, against the mean of their starts and against BM25. No training, no
choice. Writes (merged, one entry per collection) the ``--output`` JSON.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("bm25", "dense-initial", "dense-flat", "ensemble", "sparse-inference-free")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path, help="the first (baseline) experiment folder")
    p.add_argument("b", type=Path, nargs="?", help="the second experiment folder (none: the first alone)")
    p.add_argument("--labels", nargs="+", default=["a", "b"], help="a name for each experiment")
    p.add_argument("--seed-mean", action="store_true",
                   help="the two experiments are seeds of one recipe: also test their students' mean, query by query")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "pipeline_compare.json")
    args = p.parse_args()

    from scipy.stats import ttest_rel

    from retrieval_kd.data import load_collection, read_run
    from retrieval_kd.data.formats import atomic_write
    from retrieval_kd.eval import evaluate
    from retrieval_kd.utils.hardware import hardware_info

    experiments = [e for e in (args.a, args.b) if e is not None]
    labels = args.labels[: len(experiments)]
    if len(set(labels)) != len(experiments):
        raise SystemExit(f"pipeline_compare: give one distinct --labels name per experiment, got {args.labels}")
    evals = [json.loads((e / "config.json").read_text())["eval"] for e in experiments]
    if len(evals[0]) != 1 or any(e != evals[0] for e in evals):
        raise SystemExit(f"pipeline_compare: the two experiments need the same single eval set, got {evals}")
    ev = evals[0][0]
    collection = load_collection(ev["dataset"])
    qrels = collection.qrels(ev["split"])
    level = collection.conventions.relevance_level
    name = ev.get("name") or f"{Path(ev['dataset']).name}-{ev['split']}"
    metrics_file = experiments[0] / "metrics.json"
    stored = json.loads(metrics_file.read_text()).get(name, {}) if metrics_file.is_file() else {}
    ignore_ids = stored.get("ignore_identical_ids")  # as the pipeline's evaluate stage judged the runs
    if ignore_ids is None:  # evaluated before it recorded the rule
        ignore_ids = collection.conventions_for(ev["split"]).ignore_identical_ids

    scores, per_query = {}, {}
    for label, exp in zip(labels, experiments):
        for run in RUNS:
            path = exp / "runs" / name / f"{run}.run"
            if not path.is_file():
                continue
            result = evaluate(qrels, read_run(path), ["ndcg@10", "recall@100"], level, ignore_ids)
            scores[f"{label}.{run}"] = {m: round(v, 4) for m, v in result.scores.items()}
            per_query[f"{label}.{run}"] = result.per_query["ndcg@10"]

    def paired(x: str, y: str) -> dict:
        qids = sorted(set(per_query[x]) | set(per_query[y]))
        a = [per_query[x].get(q, 0.0) for q in qids]
        b = [per_query[y].get(q, 0.0) for q in qids]
        p_value = float(ttest_rel(a, b).pvalue)  # NaN when the two are equal on every query
        return {"diff": round((sum(a) - sum(b)) / len(qids), 4), "p": None if math.isnan(p_value) else round(p_value, 4)}

    pairs = [(f"{lab}.dense-flat", f"{lab}.{base}") for lab in labels for base in ("dense-initial", "bm25")]
    if len(labels) == 2:
        pairs += [(f"{labels[1]}.{run}", f"{labels[0]}.{run}") for run in ("dense-flat", "ensemble", "sparse-inference-free")]
    if len(labels) == 2 and args.seed_mean:
        for run in ("dense-flat", "dense-initial"):  # two seeds: each query's nDCG@10 averaged over them
            keys = [f"{lab}.{run}" for lab in labels]
            if all(k in per_query for k in keys):
                qids = set(per_query[keys[0]]) | set(per_query[keys[1]])
                mean = {q: (per_query[keys[0]].get(q, 0.0) + per_query[keys[1]].get(q, 0.0)) / 2 for q in qids}
                per_query[f"mean.{run}"] = mean
                scores[f"mean.{run}"] = {"ndcg@10": round(sum(mean.values()) / len(mean), 4)}
        pairs += [("mean.dense-flat", "mean.dense-initial"), ("mean.dense-flat", f"{labels[0]}.bm25")]
    tests = {f"{x} vs {y}": paired(x, y) for x, y in pairs if x in per_query and y in per_query}  # runs it has
    entry = {"experiments": {lab: str(e) for lab, e in zip(labels, experiments)}, "eval": ev, "queries": len(qrels),
             "ndcg@10_recall@100": scores, "paired_t_ndcg@10": tests, "hardware": hardware_info()}
    print(json.dumps({"collection": name, "scores": scores, "tests": tests}, indent=1))
    results = json.loads(args.output.read_text()) if args.output.is_file() else {}
    results[name] = entry
    with atomic_write(args.output) as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
