"""How far trained students moved from the model they started from: relative L2 distance of their weights.

    python benchmarks/weight_drift.py --start sentence-transformers/all-MiniLM-L6-v2 \
        experiments/label-free/cranfield/label_free_dense-others-kl-s0-* --output benchmarks/results/weight_drift.json

For each student: ||w_student - w_start|| / ||w_start|| over every floating-point parameter the two share (the
whole network as one vector), and the largest per-tensor value. A diagnostic of under-training (a student that
barely moved cannot have learnt much), not a quality measure.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


def drift(start: dict, student: dict) -> dict:
    """Relative L2 distance of ``student`` from ``start`` (state dicts), overall and the largest per tensor."""
    import torch

    shared = [k for k in start if k in student and start[k].is_floating_point() and start[k].shape == student[k].shape]
    if not shared:
        raise ValueError("the two models share no floating-point parameter of the same shape")
    # squared norms of each tensor's change and of the tensor itself, computed once for both figures
    sq = {k: (float(torch.sum((student[k].double() - start[k].double()) ** 2)), float(torch.sum(start[k].double() ** 2)))
          for k in shared}
    overall = (sum(d for d, _ in sq.values()) / sum(n for _, n in sq.values())) ** 0.5
    per_tensor = {k: (d / max(n, 1e-24)) ** 0.5 for k, (d, n) in sq.items()}
    worst = max(per_tensor, key=per_tensor.get)
    return {"relative_l2": round(overall, 6), "parameters": len(shared),
            "max_tensor": worst, "max_tensor_relative_l2": round(per_tensor[worst], 6)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("students", nargs="+", type=Path, help="SentenceTransformer folders")
    p.add_argument("--start", required=True, help="the starting model (hub id or folder)")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from sentence_transformers import SentenceTransformer

    start = SentenceTransformer(args.start, device="cpu").state_dict()
    results = {"start": args.start, "students": {}}
    for folder in args.students:
        student = SentenceTransformer(str(folder), device="cpu").state_dict()
        results["students"][str(folder)] = drift(start, student)
        print(json.dumps({str(folder): results["students"][str(folder)]}))
    if args.output:
        from retrieval_kd.data.formats import atomic_write

        with atomic_write(args.output) as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
