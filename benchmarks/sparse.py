"""Inference-free sparse students on SciFact: quality, FLOPS, and query latency against BM25.

Usage: python benchmarks/sparse.py [--config configs/sparse/scifact-demo.yaml] [--skip-ablation]
       [--ablation-epochs N] [--ablation-set KEY=VALUE ...] [--reuse-students]

Rows (nDCG@10 on SciFact test, exact top-1000 from the inverted index of retrieval_kd.index.sparse):
* BM25 (bm25s, k1 0.9, b 0.4, stemmed);
* siamese SPLADE-tiny (the offline pack's MLM: the same model encodes queries and documents);
* inference-free, untrained: SPLADE-tiny documents, queries = tokens x IDF (no training);
* the inference-free student: SPLADE-tiny documents trained from the heterogeneous ensemble (all-MiniLM-L6-v2 +
  SPLADE-tiny, per-query min-max) with the IDF-aware penalty (the config);
* ablation: plain FLOPS (binary query weights) instead of IDF-aware; a single dense teacher (MiniLM) instead of
  the ensemble. Same steps and lambda_d; FLOPS is reported for each. At matched FLOPS: of each pair (the
  student vs an ablation row), the denser one's document weights are pruned below one global threshold until
  its FLOPS equals the sparser one's (``prune_to_flops``), and both are scored at that cost.

FLOPS = sum over tokens of p_d(t) p_q(t) (Paria et al. 2020; the share of documents / queries where the token is
non-zero). Latency: the same 300 test queries, one thread, top-100: tokenise + search over our inverted index,
against bm25s tokenise + retrieve (``n_threads=1``) over the same corpus; best of 5 interleaved repeats.

Writes benchmarks/results/sparse.json: {"scifact": {"bm25", "splade_tiny", "inference_free", "flops",
"latency_ratio_vs_bm25", ...}}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLADE = "rkd-local/splade-tiny"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def measure_latency(index, query_side, bm25_index, queries: dict, repeats: int = 5) -> dict:
    """One thread, same queries, top-100, both batched the same way: tokenise all queries in one call, then one
    search per query (ours: posting-list accumulation; bm25s: its retrieve with ``n_threads=1``). Best of
    ``repeats`` interleaved runs."""
    import time

    import torch

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    ours, theirs = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        for ids, w in query_side.encode_many(queries).values():
            index.search(ids, w, k=100)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        bm25_index.search(queries, top_k=100, n_threads=1)
        theirs.append(time.perf_counter() - t)
    n = len(queries)
    return {"ratio": round(min(ours) / min(theirs), 3),
            "inference_free_ms_per_query": round(1000 * min(ours) / n, 3),
            "bm25s_ms_per_query": round(1000 * min(theirs) / n, 3), "queries": n, "repeats": repeats,
            "threads": 1, "top_k": 100}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "sparse" / "scifact-demo.yaml")
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument("--latency-only", action="store_true",
                        help="re-measure latency with the student already trained, updating sparse.json")
    parser.add_argument("--ablation-epochs", type=int, default=None,
                        help="train the ablation's students (its IDF-aware ensemble row included) for this many epochs "
                             "instead of the config's")
    parser.add_argument("--ablation-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the ablation's three students only (repeatable), e.g. "
                             "train_max_length=128: the ablation compares its rows at settings cheaper than the main "
                             "student's")
    parser.add_argument("--reuse-students", action="store_true",
                        help="load a student whose folder holds a finished run of the same config instead of training")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "sparse.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("sentence_transformers", "transformers", "httpx", "huggingface_hub", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import numpy as np
    from _teacher import heterogeneous_teacher

    from retrieval_kd.cli.train_cmd import parse_overrides
    from retrieval_kd.data import load_collection
    from retrieval_kd.data.formats import atomic_write
    from retrieval_kd.encoders.sparse import (
        load_sparse_encoder,
        sparse_corpus_vectors,
        sparse_query_vectors,
        sparse_rows,
    )
    from retrieval_kd.eval import evaluate
    from retrieval_kd.index.sparse import QueryTokenizer, SparseIndex
    from retrieval_kd.search import bm25_index_for
    from retrieval_kd.students import load_sparse_config, train_sparse
    from retrieval_kd.students.idf import idf_vector
    from retrieval_kd.students.sparse import flops, idf_for, prune_to_flops
    from retrieval_kd.utils.hardware import hardware_info

    config = load_sparse_config(args.config, {"resume": "never"})
    collection = load_collection(config.data.dataset)
    qrels, queries = collection.qrels("test"), collection.queries("test")
    if args.latency_only:
        model_dir = f"{config.output_dir}-idf-ensemble"
        model = load_sparse_encoder(model_dir)
        vectors = sparse_corpus_vectors(model_dir, collection.corpus, config.max_seq_length, encoder=model)
        latency = measure_latency(SparseIndex(vectors, collection.corpus.ids), QueryTokenizer.from_sparse_encoder(model),
                                  bm25_index_for(collection), queries, args.repeats)
        data = json.loads(args.output.read_text())
        data["scifact"]["latency_ratio_vs_bm25"] = latency.pop("ratio")
        data["scifact"]["details"]["latency"] = latency
        with atomic_write(args.output) as fh:
            json.dump(data, fh, indent=1)
        print(json.dumps(latency), data["scifact"]["latency_ratio_vs_bm25"])
        return
    level = collection.conventions.relevance_level

    def ndcg(run) -> float:
        return round(evaluate(qrels, run, ["ndcg@10"], level).scores["ndcg@10"], 4)

    # teacher scores: the heterogeneous ensemble (dense MiniLM + sparse SPLADE-tiny), members stored too
    t0 = time.perf_counter()
    teacher, weights = heterogeneous_teacher(collection, config.data.split, Path(config.data.store))
    teach_seconds = round(time.perf_counter() - t0, 1)

    results: dict = {}
    bm25_index = bm25_index_for(collection)
    bm25_run = bm25_index.search(queries, top_k=1000, n_threads=1)
    results["bm25"] = ndcg(bm25_run)

    # siamese SPLADE-tiny and the untrained inference-free model share the document vectors
    splade = load_sparse_encoder(SPLADE)
    docs = sparse_corpus_vectors(SPLADE, collection.corpus, config.max_seq_length, encoder=splade)
    vocab_tokens = [t for t, _ in sorted(splade.tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    index = SparseIndex(docs, collection.corpus.ids, vocab_tokens)
    q_siamese = sparse_query_vectors(splade, queries)
    run = index.search_many(sparse_rows(q_siamese, queries))
    results["splade_tiny"] = ndcg(run)
    details = {"splade_tiny": {"nnz_per_doc": round(docs.nnz / docs.shape[0], 1),
                               "nnz_per_query": round(q_siamese.nnz / q_siamese.shape[0], 1),
                               "flops": round(flops(docs, q_siamese), 3)}}
    idf = idf_for(config, collection, splade.tokenizer)
    untrained = QueryTokenizer(splade.tokenizer, idf_vector(idf, splade.tokenizer), config.query_max_length)
    results["inference_free_untrained"] = ndcg(index.search_many(untrained.encode_many(queries)))

    def student(name: str, overrides: dict) -> dict:
        cfg = load_sparse_config(args.config, {"resume": "never", "output_dir": f"{config.output_dir}-{name}",
                                               **overrides})
        done = Path(cfg.output_dir) / "rkd_training.json"
        earlier = json.loads(done.read_text()) if args.reuse_students and done.exists() else {}
        # the same config, loaded through the config class (fields added since then take their defaults); the
        # folder may have been moved and the run resumed, so output_dir and resume are not compared
        run_control = {"output_dir": cfg.output_dir, "resume": cfg.resume}
        same = "config" in earlier and load_sparse_config(earlier["config"], run_control).to_dict() == cfg.to_dict()
        if same:
            logging.info("student %s: reusing the finished run in %s", name, cfg.output_dir)
            summary = earlier["summary"]
        else:
            summary = train_sparse(cfg, collection)
        model = load_sparse_encoder(cfg.output_dir)
        vectors = sparse_corpus_vectors(cfg.output_dir, collection.corpus, cfg.max_seq_length, encoder=model)
        query_side = QueryTokenizer.from_sparse_encoder(model)
        encoded = query_side.encode_many(queries)
        idx = SparseIndex(vectors, collection.corpus.ids, vocab_tokens)
        import scipy.sparse as sp

        qmat = sp.csr_matrix((np.concatenate([w for _, w in encoded.values()]),
                              np.concatenate([i for i, _ in encoded.values()]),
                              np.cumsum([0, *[len(i) for i, _ in encoded.values()]])), shape=(len(encoded), docs.shape[1]))
        return {"ndcg@10": ndcg(idx.search_many(encoded)), "flops": round(flops(vectors, qmat), 3),
                "nnz_per_doc": round(vectors.nnz / vectors.shape[0], 1),
                "nnz_per_query": round(qmat.nnz / qmat.shape[0], 1), "train_seconds": summary["train_seconds"],
                "steps": summary["steps"], "teacher": summary["teacher"], "idf_aware": summary["idf_aware"],
                "_index": idx, "_query_side": query_side, "_vectors": vectors, "_qmat": qmat, "_encoded": encoded}

    def matched(a: dict, b: dict) -> dict:
        """Both students at the sparser one's FLOPS: the denser one's document weights pruned to it."""
        (dense_name, denser), (sparse_name, sparser) = sorted({"a": a, "b": b}.items(),
                                                             key=lambda kv: (-kv[1]["flops"], kv[0] == "a"))
        pruned, threshold, value = prune_to_flops(denser["_vectors"], denser["_qmat"], sparser["flops"])
        score = ndcg(SparseIndex(pruned, collection.corpus.ids, vocab_tokens).search_many(denser["_encoded"]))
        return {"flops": round(value, 3), dense_name: score, sparse_name: sparser["ndcg@10"],
                "pruned": dense_name, "threshold": round(threshold, 4),
                "nnz_per_doc_pruned": round(pruned.nnz / pruned.shape[0], 1)}

    main_run = student("idf-ensemble", {})
    results["inference_free"] = main_run["ndcg@10"]
    results["flops"] = main_run["flops"]
    results["nnz_per_doc"] = main_run["nnz_per_doc"]
    ablation = {"idf-aware, ensemble teacher": main_run}
    if not args.skip_ablation:
        shared, suffix = parse_overrides(args.ablation_set), ""
        if args.ablation_epochs and args.ablation_epochs != config.training.get("num_train_epochs"):
            # a cheaper ablation: its three students all train for ablation_epochs
            shared["training.num_train_epochs"] = args.ablation_epochs
            suffix = f"-e{args.ablation_epochs}"
        if shared:  # the ablation's own IDF-aware ensemble row, at its settings
            ablation = {"idf-aware, ensemble teacher": student(f"idf-ensemble{suffix or '-ablation'}", shared)}
        ablation["plain FLOPS, ensemble teacher"] = student(f"plain-ensemble{suffix}",
                                                            {"loss.idf_aware": False, **shared})
        ablation["idf-aware, MiniLM teacher only"] = student(f"idf-minilm{suffix}",
                                                             {"data.teacher": f"bi-encoder:{MINILM}", **shared})

    base = ablation["idf-aware, ensemble teacher"]
    results["ablation_matched_flops"] = {
        f"{name} (b) vs idf-aware, ensemble teacher (a)": matched(base, row)
        for name, row in ablation.items() if row is not base}
    latency = measure_latency(main_run["_index"], main_run["_query_side"], bm25_index, queries, args.repeats)
    results["latency_ratio_vs_bm25"] = latency.pop("ratio")
    results["ablation"] = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in ablation.items()}
    results["details"] = {**details, "latency": latency, "teach_seconds": teach_seconds, "teacher": teacher.name,
                          "teacher_weights": weights}
    with atomic_write(args.output) as fh:
        json.dump({"scifact": results}, fh, indent=1)
    with atomic_write(args.output.with_suffix(".meta.json")) as fh:
        json.dump({"config": config.to_dict(), "hardware": hardware_info(), "ablation_epochs": args.ablation_epochs,
                   "command": " ".join(["python benchmarks/sparse.py", *sys.argv[1:]])}, fh, indent=1, default=str)
    print(json.dumps({k: v for k, v in results.items() if k not in ("ablation", "details")}))
    print(json.dumps(results["ablation"], indent=1))
    print(json.dumps(results["ablation_matched_flops"], indent=1))
    print(json.dumps(latency))


if __name__ == "__main__":
    main()
