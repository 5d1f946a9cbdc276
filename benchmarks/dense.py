"""Dense students on SciFact: BM25, the undistilled all-MiniLM-L6-v2, and the demo student distilled from the
BM25 + MiniLM min-max ensemble (configs/dense/scifact-demo.yaml), nDCG@10 on the test split.

Usage: python benchmarks/dense.py [--config configs/dense/scifact-demo.yaml] [--skip-training]

Steps (each reuses what earlier runs left): BM25 top-100 candidates of the train queries plus their judged
positives (``rkd teach mine``), teacher scores into experiments/scifact-dense/scores (``rkd teach``), training
(timed: the demo budget is 10 minutes on a 2-core CPU), exact search of the test queries, ranx evaluation.
The sampler/loss ablation is run separately (``benchmarks/dense_ablation.py``: many runs, a GPU helps); its
results, when present in benchmarks/results/dense_ablation.json, are copied into dense.json.

Writes benchmarks/results/dense.json: {"scifact": {"bm25", "init", "distilled", "ablation", ...}} (nDCG@10 on test).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from _teacher import MEMBERS, heterogeneous_teacher  # noqa: I001 (benchmarks/ helper)

from retrieval_kd.data import load_collection, write_run
from retrieval_kd.data.formats import atomic_write
from retrieval_kd.eval import evaluate
from retrieval_kd.search import bm25_index_for
from retrieval_kd.search.dense import dense_search
from retrieval_kd.students import load_config, train_dense
from retrieval_kd.utils.hardware import hardware_info

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "dense" / "scifact-demo.yaml")
    parser.add_argument("--skip-training", action="store_true", help="evaluate the model already in output_dir")
    parser.add_argument("--teachers", nargs="+", default=MEMBERS, help="ensemble members (teacher specs)")
    parser.add_argument("--no-fit", action="store_true",
                        help="equal ensemble weights (default: fitted on the training split, never on test)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "dense.json")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (as rkd train dense --set)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("sentence_transformers", "transformers", "httpx", "huggingface_hub", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from retrieval_kd.cli.train_cmd import parse_overrides

    config = load_config(args.config, {"resume": "never", **parse_overrides(args.overrides)})
    collection = load_collection(config.data.dataset)
    work = Path(config.data.store).parent
    # teacher scores (resumable: scored queries are skipped; members scored by other benchmarks are copied)
    t0 = time.perf_counter()
    teacher, weights = heterogeneous_teacher(collection, config.data.split, Path(config.data.store), args.teachers,
                                             fit=not args.no_fit)
    teach_seconds = time.perf_counter() - t0

    qrels = collection.qrels("test")
    queries = collection.queries("test")

    def ndcg(run) -> float:
        return round(evaluate(qrels, run, ["ndcg@10"], collection.conventions.relevance_level).scores["ndcg@10"], 4)

    bm25 = bm25_index_for(collection).search(queries, top_k=1000, n_threads=1)
    init = dense_search(config.model, collection, queries, 1000, config.max_seq_length)
    summary = None
    if not args.skip_training:
        summary = train_dense(config, collection)
    distilled = dense_search(config.output_dir, collection, queries, 1000, config.max_seq_length)
    write_run(distilled, work / "student-test.run", tag="student")
    result = {"bm25": ndcg(bm25), "init": ndcg(init), "distilled": ndcg(distilled)}
    if summary is not None:
        result["train_seconds"] = summary["train_seconds"]
        result["train_steps"] = summary["steps"]
    ablation_file = args.output.with_name("dense_ablation.json")
    if ablation_file.exists():
        result["ablation"] = json.loads(ablation_file.read_text())
    meta = {"config": config.to_dict(), "teacher": teacher.name, "weights": weights, "teach_seconds": round(teach_seconds, 1),
            "hardware": hardware_info(), "command": "python benchmarks/dense.py",
            "log_history": summary["log_history"] if summary else None}
    with atomic_write(args.output) as fh:
        json.dump({"scifact": result}, fh, indent=1)
    with atomic_write(args.output.with_suffix(".meta.json")) as fh:
        json.dump(meta, fh, indent=1, default=str)
    print(json.dumps({k: v for k, v in result.items() if k != "ablation"}))


if __name__ == "__main__":
    main()
