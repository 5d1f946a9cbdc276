"""Dense students on the inverse cloze task: how much of the teacher's gain over the start they learnt, label-free.

A sentence cut out of its document is a query whose one relevant document is the rest of that document
(:mod:`retrieval_kd.teachers.ict_weights`, the fit the label-free pipeline makes its teacher with). On such queries
this scores the fitted teacher, the start (its all-MiniLM-L6-v2 member) and each student folder given, each on the
same pools, and reports each student's nDCG@10 gain over the start with a paired t-test and its share of the
teacher's gain. No query or judgement of the collection is read: it is a dev signal, usable on any corpus.

Usage (docs/label-free.md, "300 training steps, chosen on the ICT signal"):

  python benchmarks/ict_students.py --dataset ../shared/data/scifact --ict-seeds 1 \
      --students STUDENT [STUDENT ...] --output benchmarks/results/label_free.ict-students.json

``--ict-seeds 0`` samples the sentences the pipeline's fit used (``queries.seed`` 0); another seed samples others.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = ["bm25", "bi-encoder:sentence-transformers/all-MiniLM-L6-v2", "splade:rkd-local/splade-tiny"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="a registered dataset or BEIR folder (its corpus alone is read)")
    p.add_argument("--students", nargs="+", required=True, type=Path, help="SentenceTransformer folders")
    p.add_argument("--ict-seeds", nargs="+", type=int, default=[1])
    p.add_argument("--members", nargs="+", default=MEMBERS, help="the teacher's members (the pipeline's)")
    p.add_argument("--start", type=int, default=1, help="which member is the students' start (default: MiniLM)")
    p.add_argument("--queries", type=int, default=300, help="ICT queries per seed (the pipeline's fit_queries)")
    p.add_argument("--encoding", default="auto")
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args()

    import numpy as np
    from scipy.stats import ttest_rel

    from retrieval_kd.data import load_collection
    from retrieval_kd.data.formats import atomic_write
    from retrieval_kd.pipeline.stages import teacher_member
    from retrieval_kd.teachers.ict_weights import fit_weights_ict
    from retrieval_kd.utils.hardware import hardware_info

    collection = load_collection(args.dataset)
    seeds = {}
    for seed in args.ict_seeds:
        fit = fit_weights_ict(collection, [teacher_member(m, args.encoding) for m in args.members], args.queries,
                              seed=seed, encoding=args.encoding)
        teacher, start = np.asarray(fit.per_query["ensemble"]), np.asarray(fit.per_query[args.start])
        row = {"teacher": round(fit.ndcg, 4), "weights": fit.weights, "start": round(float(start.mean()), 4),
               "queries": fit.queries, "students": {}}
        for folder in args.students:  # BM25 beside it only to make a fit possible; its member score is what counts
            alone = fit_weights_ict(collection, [teacher_member("bm25"), teacher_member(f"bi-encoder:{folder}",
                                    args.encoding)], args.queries, seed=seed, encoding=args.encoding)
            student = np.asarray(alone.per_query[1])
            gain = float((student - start).mean())
            row["students"][str(folder)] = {
                "ndcg@10": round(float(student.mean()), 4), "gain_over_start": round(gain, 4),
                "p_vs_start": float(ttest_rel(student, start).pvalue),
                "share_of_teacher_gain": round(gain / float((teacher - start).mean()), 3)}
        seeds[str(seed)] = row
        print(json.dumps({seed: row}, indent=1), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.output) as fh:
        json.dump({"dataset": args.dataset, "members": args.members, "ict_seeds": seeds,
                   "hardware": hardware_info()}, fh, indent=1)


if __name__ == "__main__":
    main()
