"""FIRST's single forward pass against generating the permutation token by token, on the same prompts.

Usage: python benchmarks/first_speed.py [--queries 5] [--window 10] [--model HuggingFaceTB/SmolLM2-135M-Instruct]

For each of the first SciFact test queries, its BM25 top-``window`` passages (64 tokens each) make one
listwise prompt. FIRST reads the identifier logits of the first generated token (one forward pass); the
baseline generates ``[B] > [A] > ...`` greedily for 4 tokens per passage (what a listwise reranker without
FIRST must decode). Prompts are identical; the ratio is baseline time / FIRST time.

Writes benchmarks/results/first_speed.json with the hardware.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from retrieval_kd.data import load_collection
from retrieval_kd.data.formats import atomic_write
from retrieval_kd.search import bm25_index_for
from retrieval_kd.teachers import LLMRerankerTeacher
from retrieval_kd.utils.hardware import hardware_info

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "first_speed.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    c = load_collection("scifact")
    queries = dict(list(c.queries("test").items())[: args.queries])
    run = bm25_index_for(c).search(queries, top_k=args.window)
    teacher = LLMRerankerTeacher(args.model, mode="first", window=args.window, max_passage_tokens=64)
    prompts = [(queries[q], c.corpus.texts(list(run[q]))) for q in queries]
    teacher.window_logits(*prompts[0])  # warm-up
    teacher.generate_permutation(*prompts[0], max_new_tokens=4)

    t0 = time.perf_counter()
    for query, passages in prompts:
        teacher.window_logits(query, passages)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    sample = ""
    for query, passages in prompts:
        sample = teacher.generate_permutation(query, passages)
    t_generate = time.perf_counter() - t0

    ratio = t_generate / t_first
    print(f"{len(prompts)} prompts of {args.window} passages, {args.model}")
    print(f"FIRST (1 forward pass)      {t_first / len(prompts) * 1000:8.1f} ms/prompt")
    print(f"generate {4 * args.window + 2} tokens          {t_generate / len(prompts) * 1000:8.1f} ms/prompt")
    print(f"speed-up {ratio:.1f}x   (last generated: {sample[:60]!r})")
    out = {"prompts": len(prompts), "window": args.window, "model": args.model,
           "first_ms_per_prompt": round(t_first / len(prompts) * 1000, 1),
           "generate_ms_per_prompt": round(t_generate / len(prompts) * 1000, 1),
           "generated_tokens": 4 * args.window + 2, "speedup": round(ratio, 2),
           "hardware": hardware_info(), "command": "python benchmarks/first_speed.py"}
    with atomic_write(args.output) as fh:
        json.dump(out, fh, indent=1)
    print(f"results: {args.output}")


if __name__ == "__main__":
    main()
