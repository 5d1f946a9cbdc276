"""One sparse-student training step's document side, sentence-transformers' SpladePooling against the fused
projection + max (``retrieval_kd.students.fused_splade``), in the same run on the same batches.

Usage: python benchmarks/sparse_training.py [--model rkd-local/splade-tiny] [--batch 64] [--tokens 128 256]
       [--rounds 5] [--bf16]
A batch of SciFact passages (64 = the 32 positives and 32 negatives of a batch of 32 pairs) at each ``--tokens``
through the SPLADE document encoder, forward + backward of a loss on the pooled vectors; best of ``--rounds``
per path, alternating. Writes benchmarks/results/sparse_training.json and prints the table.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from retrieval_kd.data import load_collection
from retrieval_kd.data.formats import atomic_write
from retrieval_kd.students.fused_splade import fused_splade_pooling
from retrieval_kd.utils.hardware import hardware_info

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="rkd-local/splade-tiny")
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="under bf16 autocast, as training.bf16 trains")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "sparse_training.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    corpus = load_collection(args.dataset).corpus
    texts = corpus.texts(corpus.ids[:args.batch])
    results = {str(tokens): _measure(args, texts, tokens) for tokens in args.tokens}
    print("| tokens | library s/step | fused s/step | speedup | max abs diff |\n|---:|---:|---:|---:|---:|")
    for tokens, r in results.items():
        print(f"| {tokens} | {r['seconds_best']['library']:.3f} | {r['seconds_best']['fused']:.3f} | "
              f"x{r['speedup']} | {r['max_abs_diff']:.1e} |")
    out = {"model": args.model, "dataset": args.dataset, "batch": args.batch, "bf16_autocast": args.bf16,
           "rounds": args.rounds, "results": results, "hardware": hardware_info(),
           "command": "python benchmarks/sparse_training.py " + " ".join(sys.argv[1:])}
    with atomic_write(args.output) as fh:
        json.dump(out, fh, indent=1)
    print(f"results: {args.output}")


def _measure(args, texts: list[str], tokens: int) -> dict:
    """Best-of-rounds seconds of one step's document side on both paths, alternating, and their output gap."""
    from sentence_transformers.sentence_transformer.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    from retrieval_kd.models.resolve import resolve_model

    doc = Transformer(resolve_model(args.model, "model"), max_seq_length=tokens, transformer_task="fill-mask")
    pool = SpladePooling(pooling_strategy="max", activation_function="relu")
    doc.train()
    pool.train()
    features = doc.preprocess(texts)
    weights = torch.linspace(0.5, 2.0, doc.auto_model.config.vocab_size)

    def step() -> tuple[float, torch.Tensor]:
        doc.auto_model.zero_grad()
        torch.manual_seed(0)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            out = pool(doc(dict(features)))["sentence_embedding"]
            loss = (out.float() * weights).sum() + 1e-3 * (out.float().sum(0) ** 2).sum()   # FLOPS-like term
        loss.backward()
        return time.perf_counter() - t0, out.detach().float()

    times: dict[str, list[float]] = {"library": [], "fused": []}
    outs = {}
    for _ in range(args.rounds):
        seconds, outs["library"] = step()
        times["library"].append(seconds)
        with fused_splade_pooling(doc, pool):
            seconds, outs["fused"] = step()
        times["fused"].append(seconds)
    best = {k: min(v) for k, v in times.items()}
    return {"padded_tokens": int(features["input_ids"].numel()),
            "seconds_best": {k: round(v, 3) for k, v in best.items()},
            "seconds_all": {k: [round(s, 3) for s in v] for k, v in times.items()},
            "speedup": round(best["library"] / best["fused"], 2),
            "max_abs_diff": float((outs["library"] - outs["fused"]).abs().max())}


if __name__ == "__main__":
    main()
