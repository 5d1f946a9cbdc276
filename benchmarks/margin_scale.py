"""Do the teacher's margins and the dense student's start speak on one scale? A label-free check of the training pairs.

Margin-MSE regresses the student's margin ``s(q, p) - s(q, n)`` (cosines, for all-MiniLM-L6-v2) onto the teacher's
(per-query min-max ensemble scores in [0, 1]). Were their spreads far apart, the loss would stretch or squeeze the
student's embedding space rather than teach it an order; the inference-free sparse student rescales its teacher for
that reason (``loss.calibrate_scale``, README "Inference-free sparse students"). This reads the dense student's
training pairs of a pipeline experiment (made-up queries only: no query or judgement of the collection) and
reports both margins' mean and standard deviation, their correlation, and the scale that calibration would apply
(``std(start) / std(teacher)``; 1: already on one scale).

Usage (docs/label-free.md, "The teacher's margins against the start's"):

  python benchmarks/margin_scale.py configs/pipeline/label-free.yaml --dataset ../shared/data/scifact \
      --set name=diag --output benchmarks/results/label_free.margin-scale.json

The experiment's ``teach`` stage must have run (its score store is read).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="the pipeline YAML the experiment ran")
    p.add_argument("--dataset", default=None, help="as given to rkd pipeline")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--pairs", type=int, default=512, help="training pairs sampled")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from retrieval_kd.cli.train_cmd import parse_overrides
    from retrieval_kd.data.formats import atomic_write
    from retrieval_kd.pipeline import load_pipeline_config
    from retrieval_kd.pipeline.config import student_config
    from retrieval_kd.students.dense import prepare_training_data
    from retrieval_kd.utils.hardware import hardware_info

    config = load_pipeline_config(args.config, parse_overrides(args.overrides), dataset=args.dataset)
    dense = student_config(config, "dense")
    data = prepare_training_data(dense)
    rng = np.random.default_rng(args.seed)
    rows = data.dataset.select(sorted(rng.choice(data.dataset.num_rows, min(args.pairs, data.dataset.num_rows),
                                                 replace=False)))
    model = SentenceTransformer(str(dense.model), device="cpu")
    model.max_seq_length = dense.train_max_length or dense.max_seq_length
    with torch.no_grad():
        q, pos, neg = (model.encode(list(rows[c]), convert_to_numpy=True, normalize_embeddings=True)
                       for c in ("query", "positive", "negative"))
    start = (q * pos).sum(1) - (q * neg).sum(1)
    teacher = (np.asarray(rows["score_positive"]) - np.asarray(rows["score_negative"])) * dense.data.teacher_scale
    out = {"experiment": str(config.work_dir), "pairs": len(start), "training_rows": data.dataset.num_rows,
           "start": dense.model, "max_length": model.max_seq_length,
           "teacher_margin": {"mean": round(float(teacher.mean()), 4), "std": round(float(teacher.std()), 4)},
           "start_margin": {"mean": round(float(start.mean()), 4), "std": round(float(start.std()), 4)},
           "correlation": round(float(np.corrcoef(start, teacher)[0, 1]), 4),
           "calibrated_scale": round(float(start.std() / teacher.std()), 4),
           "command": "python benchmarks/margin_scale.py " + " ".join(
               [str(args.config)] + (["--dataset", args.dataset] if args.dataset else [])
               + [f"--set {o}" for o in args.overrides] + ["--output", str(args.output)]),
           "hardware": hardware_info()}
    with atomic_write(args.output) as fh:
        json.dump(out, fh, indent=1)
    print(json.dumps({k: out[k] for k in ("teacher_margin", "start_margin", "correlation", "calibrated_scale")}))


if __name__ == "__main__":
    main()
