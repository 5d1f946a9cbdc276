"""Teacher throughput (pairs/s) on this CPU, and the overhead against calling sentence-transformers directly.

Usage: python benchmarks/teacher_throughput.py [--queries 8] [--k 25] [--repeats 3]

The same (query, passage) pairs from SciFact test (BM25 top-k of the first queries) go through
(a) the teacher's ``score_batch`` and (b) the library call the teacher wraps, measured alternately:
``SentenceTransformer.encode`` + dot products, ``CrossEncoder.predict``, ``SparseEncoder.encode`` + dot.
Both sides start cold (no cached passage embeddings) and run ``--repeats`` times each, alternating, after a
warm-up; the best time counts. The cross-encoder is all-MiniLM-L6-v2's body with an untrained one-logit head (no MS MARCO
cross-encoder exists offline); throughput does not depend on the head's weights. LLM modes have no
sentence-transformers equivalent and report pairs/s only.

Writes benchmarks/results/teacher_throughput.json with the hardware.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from retrieval_kd.data import load_collection
from retrieval_kd.data.formats import atomic_write
from retrieval_kd.search import bm25_index_for
from retrieval_kd.teachers import BiEncoderTeacher, CrossEncoderTeacher, LLMRerankerTeacher, SpladeTeacher
from retrieval_kd.utils.hardware import hardware_info

ROOT = Path(__file__).resolve().parents[1]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def paired(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Best-of times of two functions measured alternately (a, b, a, b, ...), so drift in machine load hits both."""
    fn_a()
    fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return min(times_a), min(times_b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--k", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-llm", action="store_true", help="skip the LLM modes (pairs/s only)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "teacher_throughput.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    c = load_collection("scifact")
    queries = dict(list(c.queries("test").items())[: args.queries])
    run = bm25_index_for(c).search(queries, top_k=args.k)
    items = [(queries[q], list(run[q]), c.corpus.texts(list(run[q]))) for q in queries]
    pairs = [(q, t) for q, _, texts in items for t in texts]
    n_pairs = len(pairs)
    results = {}

    # bi-encoder
    from sentence_transformers import CrossEncoder, SentenceTransformer

    def run_bi_teacher():
        t = BiEncoderTeacher(MINILM, full_corpus=False)
        t._model = st
        t.score_batch(items)

    st = SentenceTransformer(MINILM)
    st.max_seq_length = 256

    def run_bi_direct():
        docs = {d: x for _, ids, texts in items for d, x in zip(ids, texts)}
        d = st.encode(list(docs.values()), batch_size=32, normalize_embeddings=True)
        row = dict(zip(docs, range(len(docs))))
        q = st.encode([q for q, _, _ in items], batch_size=32, normalize_embeddings=True)
        for i, (_, ids, _) in enumerate(items):
            _ = d[[row[x] for x in ids]] @ q[i]

    results["bi-encoder"] = paired(run_bi_teacher, run_bi_direct, args.repeats)

    # cross-encoder (MiniLM body, untrained head)
    with tempfile.TemporaryDirectory() as tmp:
        ce = CrossEncoder(MINILM, num_labels=1, max_length=256, activation_fn=torch.nn.Identity())
        ce.save(tmp)
        teacher = CrossEncoderTeacher(tmp, max_length=256)
        teacher._model = CrossEncoder(tmp, max_length=256, activation_fn=torch.nn.Identity())
        results["cross-encoder"] = paired(lambda: teacher.score_batch(items),
                                          lambda: teacher._model.predict(pairs, batch_size=32), args.repeats)

    # SPLADE
    splade = SpladeTeacher("rkd-local/splade-tiny")
    model = splade.model

    def run_splade_teacher():
        t = SpladeTeacher("rkd-local/splade-tiny")
        t._model = model
        t.score_batch(items)

    def run_splade_direct():
        docs = {d: x for _, ids, texts in items for d, x in zip(ids, texts)}
        emb = model.encode(list(docs.values()), batch_size=32, convert_to_sparse_tensor=True).to_dense()
        q = model.encode([q for q, _, _ in items], batch_size=32, convert_to_sparse_tensor=True).to_dense()
        row = dict(zip(docs, range(len(docs))))
        for i, (_, ids, _) in enumerate(items):
            _ = emb[[row[x] for x in ids]] @ q[i]

    results["splade"] = paired(run_splade_teacher, run_splade_direct, args.repeats)

    out = {"pairs": n_pairs, "hardware": hardware_info(), "command": "python benchmarks/teacher_throughput.py",
           "teachers": {}}
    print(f"{n_pairs} pairs ({args.queries} SciFact test queries x BM25 top-{args.k}), best of {args.repeats}")
    print("| teacher | teacher pairs/s | direct pairs/s | overhead |")
    print("|---|---:|---:|---:|")
    for name, (t_teacher, t_direct) in results.items():
        overhead = t_teacher / t_direct - 1
        out["teachers"][name] = {"pairs_per_s": round(n_pairs / t_teacher, 1),
                                 "direct_pairs_per_s": round(n_pairs / t_direct, 1), "overhead": round(overhead, 4)}
        print(f"| {name} | {n_pairs / t_teacher:.1f} | {n_pairs / t_direct:.1f} | {overhead:+.1%} |")

    # LLM modes: pairs/s only (FIRST on one window per query)
    for mode in () if args.no_llm else ("first", "yesno", "qlm"):
        llm = LLMRerankerTeacher("HuggingFaceTB/SmolLM2-135M-Instruct", mode=mode, window=20, max_passage_tokens=64)
        llm._load()
        sub = [(q, ids[:10], texts[:10]) for q, ids, texts in items[:2]]
        t = best_of(lambda llm=llm, sub=sub: [llm.score(q, ids, texts) for q, ids, texts in sub], 1)
        n = sum(len(ids) for _, ids, _ in sub)
        out["teachers"][f"llm-{mode}"] = {"pairs_per_s": round(n / t, 1)}
        print(f"| llm-{mode} (SmolLM2-135M) | {n / t:.1f} | n/a | n/a |")
    with atomic_write(args.output) as fh:
        json.dump(out, fh, indent=1)
    print(f"results: {args.output}")


if __name__ == "__main__":
    np.random.seed(0)
    main()
