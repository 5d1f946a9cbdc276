"""Distillation without human labels (issue 19): students trained on queries made from the corpus itself.

Usage:
  python benchmarks/label_free.py --generator Qwen/Qwen2.5-7B-Instruct --examples-dir benchmarks/examples   # a GPU
  python benchmarks/label_free.py --queries-method sentence          # no model: inverse cloze task queries
  python benchmarks/label_free.py --smoke                            # the wiring only, on a 60-document slice

Per dataset, nDCG@10 on its *test* split (results keys ``<dataset>.<row>``):

  bm25                          BM25 (bm25s, k1 0.9, b 0.4)
  init_dense                    the undistilled student (--student, all-MiniLM-L6-v2)
  labeled_dense                 (scifact) distilled on train queries + qrels, the fitted ensemble teacher
  label_free_dense              distilled on generated queries, positives = their source documents, no label used
  label_free_sparse             (scifact) the inference-free sparse student on the same data
  labeled_plus_generated_dense  (scifact) train queries + qrels and the generated queries, one teacher

Steps of a label-free row: queries (``rkd queries generate`` or ``crop``; length, duplicate and round-trip filters),
BM25 top-k candidates plus each query's source (``rkd teach mine --queries``), teacher scores (the heterogeneous
ensemble of ``_teacher.MEMBERS`` with *equal* weights: fitting them needs labels), training. Settings are chosen on
a dev carve of the *generated* queries (``data.dev_fraction`` of them, judged by their pseudo-qrels): ``--sweep
KEY=V1,V2`` trains one run per value of one config key, keeps the best dev nDCG@10 and evaluates only that run on
test. No test query or test judgement is seen before that last step.

Writes benchmarks/results/label_free.json (``{"scifact": {...}, "cranfield": {...}}``) and label_free.meta.json
(settings, dev sweep, query counts, hardware).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"scifact": ["bm25", "init_dense", "labeled_dense", "label_free_dense", "label_free_sparse",
                    "labeled_plus_generated_dense"],
        "cranfield": ["bm25", "init_dense", "label_free_dense"]}
SMOKE = {"training.max_steps": 2, "training.per_device_train_batch_size": 4, "training.save_strategy": "no",
         "training.use_cpu": True, "sampler.kind": "random", "data.max_negatives": 3, "max_seq_length": 64,
         "train_max_length": 64}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(ROWS), help="registered names (or BEIR folders)")
    p.add_argument("--work", type=Path, default=ROOT / "experiments" / "label-free")
    p.add_argument("--queries-method", default="generate", choices=["generate", "title", "sentence", "span"])
    p.add_argument("--generator", default="HuggingFaceTB/SmolLM2-135M-Instruct",
                   help="causal LM (Promptagator-style) or seq2seq doc2query (BeIR/query-gen-msmarco-t5-base-v1)")
    p.add_argument("--examples-dir", type=Path, default=None, help="DIR/<dataset>.jsonl: few-shot examples")
    p.add_argument("--per-document", type=int, default=3)
    p.add_argument("--max-documents", type=int, default=None, help="a seeded sample of each corpus")
    p.add_argument("--round-trip", default="bm25", help="round-trip retriever ('' for none)")
    p.add_argument("--round-trip-k", type=int, default=5)
    p.add_argument("--device", default=None)
    p.add_argument("--teachers", nargs="+", default=None, help="teacher specs (default: _teacher.MEMBERS)")
    p.add_argument("--top-k", type=int, default=100, help="BM25 candidates per query")
    p.add_argument("--dense-config", type=Path, default=ROOT / "configs" / "dense" / "scifact-demo.yaml")
    p.add_argument("--sparse-config", type=Path, default=ROOT / "configs" / "sparse" / "scifact-demo.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a student config key (as rkd train --set), every run")
    p.add_argument("--sweep", default=None, metavar="KEY=V1,V2",
                   help="one config key swept for the label-free dense run, chosen on the generated dev carve")
    p.add_argument("--dev-fraction", type=float, default=0.1, help="generated queries held out as the dev carve")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true",
                   help="wiring check: 60-document slices, crop queries, BM25 teacher, 2 training steps")
    p.add_argument("--output", type=Path, default=None,
                   help="default benchmarks/results/label_free.json (--smoke: WORK/label_free.smoke.json)")
    return p.parse_args()


# -- data --------------------------------------------------------------------------------------------------------
def slice_collection(collection, folder: Path, n_docs: int = 60, n_queries: int = 10, seed: int = 0) -> str:
    """A small BEIR folder: the judged documents of ``n_queries`` test (and train) queries plus random others.
    For --smoke only: its scores mean nothing."""
    import numpy as np

    from retrieval_kd.data.formats import write_qrels

    rng = np.random.default_rng(seed)
    splits = {s: collection.qrels(s) for s in ("train", "test") if s in collection.splits}
    picked = {s: dict(sorted(q.items())[:n_queries]) for s, q in splits.items()}
    keep = {d for q in picked.values() for docs in q.values() for d in docs if d in collection.corpus}
    ids = collection.corpus.ids
    keep |= {ids[int(i)] for i in rng.choice(len(ids), size=min(n_docs, len(ids)), replace=False)}
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for doc in collection.corpus:
            if doc["_id"] in keep:
                fh.write(json.dumps(doc) + "\n")
    texts = collection.all_queries
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as fh:
        for q in sorted({q for p in picked.values() for q in p}):
            fh.write(json.dumps({"_id": q, "text": texts[q]}) + "\n")
    for split, qrels in picked.items():
        write_qrels({q: {d: g for d, g in docs.items() if d in keep} for q, docs in qrels.items()},
                    folder / "qrels" / f"{split}.tsv")
    return str(folder)


def make_queries(args, name: str, collection, work: Path) -> Path:
    """Training queries of a label-free run (resumable generation, or crops), filtered; returns queries.jsonl."""
    from retrieval_kd.queries import (
        QueryFilters,
        QueryGenerator,
        crop_queries,
        generate_queries,
        read_examples,
        write_query_set,
    )

    out = work / "queries.jsonl"
    filters = QueryFilters(min_words=2, max_words=48, round_trip=args.round_trip or None,
                           round_trip_k=args.round_trip_k)
    if args.queries_method == "generate":
        examples_file = args.examples_dir / f"{name}.jsonl" if args.examples_dir else None
        examples = read_examples(examples_file) if examples_file and examples_file.exists() else None
        generator = QueryGenerator(args.generator, examples, queries_per_document=args.per_document,
                                   device=args.device, dtype="bfloat16" if args.device == "cuda" else "float32")
        generate_queries(generator, collection, out, batch_size=16, seed=args.seed, max_documents=args.max_documents,
                         skip_empty=True, filters=filters)
    else:
        write_query_set(crop_queries(collection, args.queries_method, args.per_document, args.seed,
                                     remove_sentence=0.9, max_span_words=32, max_documents=args.max_documents,
                                     skip_empty=True, filters=filters), out)
    return out


def teach(collection, queries_file: Path | None, split: str | None, store: Path, specs, top_k: int, weights=None):
    """Candidates (BM25 top-k + positives: sources, or judged ones of ``split``) scored by the ensemble of ``specs``
    (``weights`` None: equal) into ``store``; returns the teacher's fingerprint."""
    from retrieval_kd.queries import read_query_set
    from retrieval_kd.teachers import EnsembleTeacher, mine_candidates, parse_teacher, score_candidates

    queries = positives = None
    if queries_file is not None:
        made = read_query_set(queries_file)
        queries, positives = made.queries, {q: {d: 1} for q, d in made.sources.items()}
    candidates = mine_candidates(collection, split, top_k, queries=queries, positives=positives)
    teacher = EnsembleTeacher([parse_teacher(s) for s in specs], weights, normalization="minmax")  # as _teacher.py
    score_candidates(teacher, collection, candidates, store, queries=queries)
    return teacher.fingerprint


# -- students ----------------------------------------------------------------------------------------------------
def train(kind: str, config_file: Path, overrides: dict) -> dict:
    from retrieval_kd.students import load_config, load_sparse_config, train_dense, train_sparse

    if kind == "dense":
        return train_dense(load_config(config_file, {"resume": "never", **overrides}), overwrite=True)
    return train_sparse(load_sparse_config(config_file, {"resume": "never", **overrides}), overwrite=True)


def choose_on_dev(config_file: Path, base: dict, sweep: str | None, work: Path) -> tuple[dict, list[dict]]:
    """Train one dense run per value of the swept key; the best dev nDCG@10 (generated dev carve) wins."""
    from retrieval_kd.cli.train_cmd import parse_overrides

    if not sweep:
        summary = train("dense", config_file, base)
        return {**base, "summary": summary}, [{"setting": None, "dev": summary["dev"]}]
    key, _, values = sweep.partition("=")
    table, best = [], None
    for value in values.split(","):
        overrides = {**base, **parse_overrides([f"{key}={value}"]),
                     "output_dir": str(work / f"dense-{key}-{value}")}
        summary = train("dense", config_file, overrides)
        dev = summary["dev"].get("dev_cosine_ndcg@10", float("nan"))
        table.append({"setting": f"{key}={value}", "dev": summary["dev"]})
        if best is None or dev > best[0]:
            best = (dev, {**overrides, "summary": summary})
    return best[1], table


def ndcg_at_10(collection, run) -> float:
    from retrieval_kd.eval import evaluate

    level = collection.conventions.relevance_level
    return round(evaluate(collection.qrels("test"), run, ["ndcg@10"], level).scores["ndcg@10"], 4)


def dense_run(model: str, collection, max_seq_length: int):
    from retrieval_kd.search.dense import dense_search

    return dense_search(model, collection, collection.queries("test"), 1000, max_seq_length)


def sparse_run(model: str, collection, ref: str, folder: Path):
    from retrieval_kd.index.sparse import build_sparse_index
    from retrieval_kd.search.retriever import Retriever

    build_sparse_index(model, collection.corpus, folder, dataset=ref, overwrite=True)
    return Retriever(folder, dataset=ref).search_run(collection.queries("test"), 1000)


# -- one dataset -------------------------------------------------------------------------------------------------
def run_dataset(args, ref: str, overrides: dict) -> tuple[dict, dict]:
    from retrieval_kd.data import load_collection
    from retrieval_kd.queries import read_query_set
    from retrieval_kd.search import bm25_index_for

    name = Path(ref).name
    work = args.work / name
    if args.smoke:
        ref = slice_collection(load_collection(ref), work / "slice", seed=args.seed)
    collection = load_collection(ref)
    specs = args.teachers or (["bm25"] if args.smoke else _members())
    rows, meta = {}, {"dataset": ref, "teachers": specs}
    rows["bm25"] = ndcg_at_10(collection, bm25_index_for(collection).search(collection.queries("test"), 1000))
    t0 = time.perf_counter()
    queries_file = make_queries(args, name, collection, work)
    made = read_query_set(queries_file)
    meta.update(queries=made.counts, queries_seconds=round(time.perf_counter() - t0, 1))
    store = work / "scores"
    fingerprint = teach(collection, queries_file, None, store, specs, args.top_k)
    base = {**overrides, "data.dataset": ref, "data.store": str(store), "data.teacher": fingerprint,
            "data.queries": str(queries_file), "data.positives": "source", "data.dev_fraction": args.dev_fraction,
            "output_dir": str(work / "dense")}
    chosen, table = choose_on_dev(args.dense_config, base, args.sweep, work)
    meta.update(dev_sweep=table, chosen={k: v for k, v in chosen.items() if k != "summary"})
    seq = 64 if args.smoke else 256
    rows["init_dense"] = ndcg_at_10(collection, dense_run(_student(args), collection, seq))
    rows["label_free_dense"] = ndcg_at_10(collection, dense_run(chosen["output_dir"], collection, seq))
    wanted = ROWS.get(name, ROWS["scifact"])
    if "label_free_sparse" in wanted:
        # the sparse student takes the chosen data settings (the dense run's loss and sampler are its own)
        sparse = {**overrides, **{k: v for k, v in chosen.items() if k.startswith("data.")},
                  "output_dir": str(work / "sparse"), "idf_file": str(work / "idf.json"),
                  "data.dev_fraction": 0.0, "training.eval_strategy": "no"}  # the sparse trainer has no evaluator
        train("sparse", args.sparse_config, sparse)
        rows["label_free_sparse"] = ndcg_at_10(collection, sparse_run(str(work / "sparse"), collection, ref,
                                                                      work / "sparse-index"))
    if "labeled_dense" in wanted and "train" in collection.splits:
        rows.update(labeled_rows(args, collection, ref, work, specs, queries_file, chosen, overrides, seq, meta))
    return rows, meta


def labeled_rows(args, collection, ref: str, work: Path, specs, queries_file: Path, chosen: dict, overrides: dict,
                 seq: int, meta: dict) -> dict:
    """``labeled_dense`` (train queries + qrels, the ensemble's weights fitted on them, as benchmarks/dense.py) and
    ``labeled_plus_generated_dense`` (those and the generated queries, scored by that same teacher)."""
    store = work / "labeled-scores"
    teacher, weights = _fitted_teacher(collection, store, specs, fit=len(specs) > 1)
    meta["labeled_teacher"] = {"fingerprint": teacher.fingerprint, "weights": weights}
    labeled = {**overrides, "data.dataset": ref, "data.store": str(store), "data.teacher": teacher.fingerprint,
               "output_dir": str(work / "labeled-dense")}
    train("dense", args.dense_config, labeled)
    teach(collection, queries_file, None, store, specs, args.top_k, weights)
    mixed = {k: v for k, v in chosen.items() if k != "summary"}
    mixed.update({"data.store": str(store), "data.teacher": teacher.fingerprint, "data.mix_labeled": True,
                  "output_dir": str(work / "mixed-dense")})
    train("dense", args.dense_config, mixed)
    return {"labeled_dense": ndcg_at_10(collection, dense_run(str(work / "labeled-dense"), collection, seq)),
            "labeled_plus_generated_dense": ndcg_at_10(collection, dense_run(str(work / "mixed-dense"), collection,
                                                                             seq))}


def _members():
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _teacher import MEMBERS

    return MEMBERS


def _fitted_teacher(collection, store: Path, specs, fit: bool):
    _members()  # benchmarks/ on the path
    from _teacher import heterogeneous_teacher

    return heterogeneous_teacher(collection, "train", store, specs, fit=fit)


def _student(args) -> str:
    from retrieval_kd.students import load_config

    return load_config(args.dense_config).model


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("sentence_transformers", "transformers", "httpx", "huggingface_hub", "faiss", "bm25s"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from retrieval_kd.cli.train_cmd import parse_overrides
    from retrieval_kd.data.formats import atomic_write
    from retrieval_kd.utils.hardware import hardware_info

    if args.smoke:
        args.queries_method = "sentence" if args.queries_method == "generate" else args.queries_method
        args.per_document = 1
        args.dev_fraction = args.dev_fraction if args.sweep else 0.0
    args.output = args.output or (args.work / "label_free.smoke.json" if args.smoke else
                                  ROOT / "benchmarks" / "results" / "label_free.json")
    overrides = {**(SMOKE if args.smoke else {}), **parse_overrides(args.overrides)}
    results, meta = {}, {"command": "python benchmarks/label_free.py", "args": vars(args), "hardware": hardware_info()}
    for ref in args.datasets:
        rows, info = run_dataset(args, ref, overrides)
        results[Path(ref).name], meta[Path(ref).name] = rows, info
        print(json.dumps({Path(ref).name: rows}))
    with atomic_write(args.output) as fh:
        json.dump(results, fh, indent=1)
    with atomic_write(args.output.with_suffix(".meta.json")) as fh:
        json.dump(meta, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
