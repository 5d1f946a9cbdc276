"""Distillation without human labels (issue 19): students trained on queries made from the corpus itself.

Usage:
  python benchmarks/label_free.py --rows bm25 init_dense label_free_dense --seeds 0 1      # SciFact, crop queries
  python benchmarks/label_free.py --datasets cranfield --rows bm25 init_dense label_free_dense
  python benchmarks/label_free.py --variant source --rows label_free_dense     # another recipe (VARIANTS)
  python benchmarks/label_free.py --teachers bm25 bi-encoder:sentence-transformers/all-MiniLM-L6-v2 \
      bi-encoder:sentence-transformers/all-mpnet-base-v2 --rows label_free_dense   # another teacher ensemble
  python benchmarks/label_free.py --queries gen.jsonl --variant teacher-kl --rows label_free_dense  # generated
  python benchmarks/label_free.py --queries gen.jsonl gen-rest.jsonl ...                           # merged
  python benchmarks/label_free.py --start-weights 0.5 ...    # + each dense student mixed with its start (WiSE-FT)
  python benchmarks/label_free.py --dev-carve 0.2 --rows bm25 init_dense labeled_plus_generated_dense ...
      # a choice for the labelled rows made on a seeded carve of the *training* queries (test is not read)
  python benchmarks/label_free.py --smoke                                      # the wiring only, 60 documents

Rows (results keys ``<dataset>.<row>``, nDCG@10 on the *test* split; a row trained with several seeds holds
their mean, each seed and the paired t-tests in ``label_free.meta.json``):

  bm25                          BM25 (bm25s, k1 0.9, b 0.4)
  init_dense                    the undistilled student (all-MiniLM-L6-v2) with the student's settings
  labeled_dense                 (needs a train split) distilled on train queries + qrels, the fitted ensemble
  label_free_dense              distilled on made-up queries (the corpus only: no training query, no qrels)
  label_free_sparse             the inference-free sparse student on the same made-up queries
  labeled_plus_generated_dense  (needs a train split) train queries + qrels and the made-up queries

A label-free row: queries cropped from the corpus (``rkd queries crop``; length, duplicate and round-trip
filters; or ``--queries``, files of ``rkd queries generate`` / ``import``, merged, put through the same filters),
candidates BM25 top-k + all-MiniLM-L6-v2 top-k (``rkd teach mine --queries``), teacher = the equal-weight
per-query min-max ensemble of BM25 and all-MiniLM-L6-v2 (``--teachers``; fitting weights needs labels), training.
Recipes (``--variant``) are compared on a *dev carve of the made-up queries* (``data.dev_fraction``: the trainer
reranks each dev query's candidates and scores nDCG@10 against its pseudo-positive), never on a test split; the
second dev signal, ``teacher_dev``, is the student's nDCG@10 against the teacher's top-3 non-source documents of
200 held-out crops. The variant is chosen by its mean rank on the two before test is read (``label_free.meta.json``
records them and test; docs/label-free.md's choice of ``others-kl`` among ``others``, ``others-kl``, ``others-mse``).

Everything a row trains or scores is kept under ``--work`` and reused on the next run (a killed run resumes:
the score store skips scored queries, a trained student folder with a summary is not trained again; its name
carries the row, the recipe, the seed and a hash of the ``--set`` overrides, so runs with other settings keep theirs).
Writes benchmarks/results/label_free.json (merged into what is there) and label_free.meta.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["bm25", "init_dense", "labeled_dense", "label_free_dense", "label_free_sparse",
        "labeled_plus_generated_dense"]
TEACHERS = ["bm25", "bi-encoder:sentence-transformers/all-MiniLM-L6-v2"]
#: recipe name -> student config overrides of the label-free rows (chosen on the dev carve, see meta)
VARIANTS = {
    # the teacher's ranking of the documents *other* than the query's source (which a crop trivially matches)
    "others": {"data.positives": "teacher", "data.exclude_source": True},
    # GPL: the source (its query sentence removed, ICT) is the positive, the teacher's candidates the negatives
    "source": {"data.positives": "source"},
    # "others" with a listwise KL over each query's candidates (the teacher's whole soft ranking, no in-batch term);
    # temperature 0.05 on both sides, the in-batch term's student temperature (min-max scores lie in [0, 1]: at 1
    # the teacher's distribution would be nearly flat)
    "others-kl": {"data.positives": "teacher", "data.exclude_source": True, "loss.name": "kl",
                  "loss.kl_temperature": 0.05},
    # "others" with the pairwise Margin-MSE term only (no in-batch teacher)
    "others-mse": {"data.positives": "teacher", "data.exclude_source": True, "loss.name": "margin-mse"},
    # for queries a model wrote (--queries): not a substring of their source, so the source stays among the
    # candidates and the student learns the teacher's soft ranking of all of them, as others-kl does of the rest
    "teacher-kl": {"data.positives": "teacher", "loss.name": "kl", "loss.kl_temperature": 0.05},
    # "others" for such queries: the dual teacher, the teacher's top one (often the source) as positive
    "teacher": {"data.positives": "teacher"},
}
DENSE_TRAIN = {"training.max_steps": 150, "training.num_train_epochs": 1, "training.learning_rate": 2.0e-5,
               "data.max_negatives": 20, "data.dev_max_queries": 200, "training.save_strategy": "no"}
SPARSE_TRAIN = {"training.max_steps": 100, "training.num_train_epochs": 1, "training.learning_rate": 2.0e-4,
                "train_max_length": 128, "data.max_negatives": 20, "training.save_strategy": "no"}
SMOKE = {"training.max_steps": 2, "training.per_device_train_batch_size": 4, "training.save_strategy": "no",
         "sampler.kind": "random", "data.max_negatives": 3, "max_seq_length": 64, "train_max_length": 64,
         "data.dev_fraction": 0.0}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["scifact"], help="registered names or BEIR folders")
    p.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds of the trained rows")
    p.add_argument("--variant", default="others", choices=list(VARIANTS))
    p.add_argument("--work", type=Path, default=ROOT / "experiments" / "label-free")
    p.add_argument("--method", default="sentence", choices=["title", "sentence", "span"], help="crop method")
    p.add_argument("--per-document", type=int, default=1)
    p.add_argument("--remove-sentence", type=float, default=0.9, help="ICT: P(query sentence left out of source)")
    p.add_argument("--queries", type=Path, nargs="+", default=None,
                   help="made-up queries from files (rkd queries generate / import; several: merged) instead of crops")
    p.add_argument("--max-queries", type=int, default=None, help="a seeded sample of the made-up queries")
    p.add_argument("--round-trip-k", type=int, default=10, help="BM25 round-trip filter (0: none)")
    p.add_argument("--top-k", type=int, default=30, help="BM25 and dense candidates per query (each)")
    p.add_argument("--teachers", nargs="+", default=TEACHERS, metavar="SPEC",
                   help="ensemble members (min-max, equal weights on the label-free rows; fitted on train on the "
                        "labelled ones), e.g. bi-encoder:sentence-transformers/all-mpnet-base-v2")
    p.add_argument("--encoding", default="torch-bf16", help="backend of every corpus/query encoding (both sides)")
    p.add_argument("--dense-config", type=Path, default=ROOT / "configs" / "dense" / "scifact-demo.yaml")
    p.add_argument("--sparse-config", type=Path, default=ROOT / "configs" / "sparse" / "scifact-demo.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a student config key of the trained rows (as rkd train --set)")
    p.add_argument("--start-weights", type=float, nargs="+", default=[], metavar="W",
                   help="also score each trained dense student mixed with its start (WiSE-FT, the students' "
                        "start_weight), made from the trained folder: rows <row>_sw<W>")
    p.add_argument("--dev-carve", type=float, default=None, metavar="F",
                   help="run on a copy of each dataset whose test split is a seeded share F of its training queries "
                        "(with their qrels; they leave training and the weight fit) and whose test queries are "
                        "gone: settings of the labelled rows chosen there never read test")
    p.add_argument("--smoke", action="store_true", help="wiring check: 60-document slices, 2 training steps")
    p.add_argument("--output", type=Path, default=None)
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
    write_queries(folder / "queries.jsonl", {q for p in picked.values() for q in p}, collection.all_queries)
    for split, qrels in picked.items():
        write_qrels({q: {d: g for d, g in docs.items() if d in keep} for q, docs in qrels.items()},
                    folder / "qrels" / f"{split}.tsv")
    return str(folder)


def write_queries(path: Path, ids, texts: dict) -> None:
    """A BEIR queries.jsonl of ``ids`` (sorted) with their ``texts``."""
    with open(path, "w", encoding="utf-8") as fh:
        for q in sorted(ids):
            fh.write(json.dumps({"_id": q, "text": texts[q]}) + "\n")


def carve_dev(ref: str, fraction: float, work: Path, seed: int = 0) -> str:
    """A BEIR folder ``<work>/<name>-dev<F%>``: the corpus (a byte copy, so every corpus-keyed cache and made-up query
    file still fits it), qrels/train.tsv = the training queries left after a seeded carve of ``fraction`` of them
    (:func:`~retrieval_kd.students.data.split_dev`), qrels/test.tsv = the carved ones, and only those queries'
    texts: the original test split is not copied. Written once (a temporary folder renamed), then reused."""
    import shutil

    from retrieval_kd.data import load_collection
    from retrieval_kd.data.formats import write_qrels
    from retrieval_kd.students.data import split_dev

    collection = load_collection(ref)
    if "train" not in collection.splits:
        raise SystemExit(f"{ref}: --dev-carve needs a train split to carve")
    folder = work / f"{Path(ref).name}-dev{round(100 * fraction)}"
    if folder.is_dir():
        return str(folder)
    qrels = collection.qrels("train")
    train_ids, dev_ids = split_dev(list(qrels), fraction, seed)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)   # our own half-written folder of a killed run
    (tmp / "qrels").mkdir(parents=True)
    shutil.copyfile(collection.corpus.path, tmp / collection.corpus.path.name)
    write_queries(tmp / "queries.jsonl", qrels, collection.all_queries)
    write_qrels({q: qrels[q] for q in train_ids}, tmp / "qrels" / "train.tsv")
    write_qrels({q: qrels[q] for q in dev_ids}, tmp / "qrels" / "test.tsv")
    tmp.rename(folder)
    logging.info("%s: %d training queries, %d carved as its test split", folder, len(train_ids), len(dev_ids))
    return str(folder)


def make_queries(args, collection, work: Path) -> Path:
    """The made-up training queries (crops or ``--queries``, filtered, sampled to ``--max-queries``); returns
    queries.jsonl. A ``--queries`` file is named by its content's hash, so a file rewritten in place is filtered
    again (and the students trained on it, whose settings name this file, are trained again)."""
    from retrieval_kd.queries import (
        QueryFilters,
        apply_filters,
        crop_queries,
        merge_query_sets,
        read_query_set,
        sample_queries,
        write_query_set,
    )

    cap = args.max_queries or "all"
    if args.queries:
        digests = [hashlib.sha1(path.read_bytes()).hexdigest() for path in args.queries]
        digest = (digests[0] if len(digests) == 1 else hashlib.sha1(" ".join(digests).encode()).hexdigest())[:8]
        made_by = f"file-{'+'.join(path.stem for path in args.queries)}-{digest}"
    else:
        made_by = f"{args.method}{args.per_document}"
    out = work / f"queries-{made_by}-rt{args.round_trip_k}-rm{args.remove_sentence}-{cap}.jsonl"
    if out.exists():   # the name holds every setting it was made with
        return out
    filters = QueryFilters(min_words=4, max_words=64, round_trip="bm25" if args.round_trip_k else None,
                           round_trip_k=max(1, args.round_trip_k))
    if args.queries:
        sets = [read_query_set(path, collection) for path in args.queries]
        made = apply_filters(merge_query_sets(sets), filters, collection)
    else:
        made = crop_queries(collection, args.method, args.per_document, seed=0,
                            remove_sentence=args.remove_sentence, max_span_words=32, skip_empty=True,
                            filters=filters)
    if args.max_queries:
        made = sample_queries(made, args.max_queries, 0)   # of the whole corpus's queries
    write_query_set(made, out)
    logging.info("%s: %s", out, read_query_set(out).counts)
    return out


def teach(collection, queries_file: Path | None, split: str | None, store: Path, top_k: int, encoding: str,
          teachers: list[str], weights=None):
    """Candidates (BM25 + dense top-k + each query's source, or the split's judged positives) scored by the
    ensemble of ``teachers`` (``weights`` None: equal) into ``store``; returns the ensemble's fingerprint."""
    from retrieval_kd.pipeline.stages import teacher_member
    from retrieval_kd.queries import read_query_set
    from retrieval_kd.teachers import EnsembleTeacher, mine_candidates, score_candidates

    queries = positives = None
    if queries_file is not None:
        made = read_query_set(queries_file)
        queries, positives = made.queries, {q: {d: 1} for q, d in made.sources.items()}
    candidates = mine_candidates(collection, split, top_k, sources=("bm25", "dense"), queries=queries,
                                 positives=positives, encoding=encoding)
    members = [teacher_member(spec, encoding) for spec in teachers]
    teacher = EnsembleTeacher(members, weights, normalization="minmax")
    score_candidates(teacher, collection, candidates, store, queries=queries)
    return teacher.fingerprint


def fitted_weights(collection, store: Path, top_k: int, encoding: str, teachers: list[str]):
    """The ensemble's weights fitted on the train split's qrels (labelled rows only), as benchmarks/dense.py."""
    from retrieval_kd.pipeline.stages import teacher_member
    from retrieval_kd.teachers import ScoreStore, fit_weights, mine_candidates, score_candidates

    candidates = mine_candidates(collection, "train", top_k, sources=("bm25", "dense"), encoding=encoding)
    runs = []
    for spec in teachers:
        member = teacher_member(spec, encoding)
        score_candidates(member, collection, candidates, store)
        with ScoreStore(store) as s:
            runs.append(s.get(member.fingerprint))
    weights, value = fit_weights(runs, collection.qrels("train"), "minmax", step=0.1)
    logging.info("ensemble weights fitted on train: %s (train nDCG@10 %.4f)", weights, value)
    return weights


# -- students ----------------------------------------------------------------------------------------------------
def settings_tag(overrides: dict) -> str:
    """A folder-name suffix for the ``--set`` overrides of a run (empty without any), so that runs of the same row,
    recipe and seed with other settings keep their own trained students."""
    if not overrides:
        return ""
    return "-" + hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:6]


def train(kind: str, config_file: Path, overrides: dict) -> dict:
    """Train (or reuse a finished run in the same folder with the same settings); returns the summary."""
    from retrieval_kd.students import load_config, load_sparse_config, train_dense, train_sparse

    out = Path(overrides["output_dir"])
    done = out / "rkd_benchmark_settings.json"
    settings = json.dumps(overrides, sort_keys=True, default=str)
    if done.exists() and done.read_text() == settings and (out / "rkd_training.json").exists():
        return json.loads((out / "rkd_training.json").read_text())
    t0 = time.perf_counter()
    if kind == "dense":
        summary = train_dense(load_config(config_file, {"resume": "never", **overrides}), overwrite=True)
    else:
        summary = train_sparse(load_sparse_config(config_file, {"resume": "never", **overrides}), overwrite=True)
    summary = {**summary, "train_seconds": round(time.perf_counter() - t0, 1)}
    (out / "rkd_training.json").write_text(json.dumps(summary, indent=1, default=str))
    done.write_text(settings)
    return summary


def dense_run(model: str, collection, max_seq_length: int, encoding: str):
    from retrieval_kd.search.dense import dense_search

    return dense_search(model, collection, collection.queries("test"), 1000, max_seq_length, encoding=encoding)


def sparse_run(model: str, collection, ref: str, folder: Path, encoding: str):
    from retrieval_kd.index.sparse import build_sparse_index
    from retrieval_kd.search.retriever import Retriever

    build_sparse_index(model, collection.corpus, folder, dataset=ref, overwrite=True, encoding=encoding)
    return Retriever(folder, dataset=ref).search_run(collection.queries("test"), 1000)


def teacher_dev(search, collection, queries_file: Path, store: Path, fingerprint: str, seed: int) -> float:
    """The label-free selection criterion: nDCG@10 of a student on the dev carve of the made-up queries (the
    queries the trainer held out with ``seed``), judged by the teacher's top 3 documents other than the query's
    source (grades 3, 2, 1), the source left out of the ranking. No label, no test query. ``search`` maps
    ``{qid: text}`` to the student's ranking ``{qid: [doc id, ...]}`` (at least 11 deep)."""
    from retrieval_kd.eval import evaluate
    from retrieval_kd.queries import read_query_set
    from retrieval_kd.students.data import split_dev
    from retrieval_kd.teachers import ScoreStore

    made = read_query_set(queries_file)
    with ScoreStore(store) as s:
        run = s.get(fingerprint)
    _, dev = split_dev([q for q in made.queries if q in run], 0.1, seed, DENSE_TRAIN["data.dev_max_queries"])
    sources = made.sources
    qrels = {}
    for q in dev:
        ranked = sorted((d for d in run[q] if d != sources[q]), key=lambda d: (-run[q][d], d))[:3]
        qrels[q] = {d: 3 - i for i, d in enumerate(ranked)}
    ranking = search({q: made.queries[q] for q in dev})
    student = {}
    for q in dev:
        hits = [d for d in ranking[q] if d != sources[q]][:10]
        student[q] = {d: float(10 - r) for r, d in enumerate(hits)}
    return round(evaluate(qrels, student, ["ndcg@10"], 1).scores["ndcg@10"], 4)


def dense_ranking(model: str, collection, max_seq_length: int, encoding: str):
    """``search`` of :func:`teacher_dev` for a dense model: exact cosine top-11 over the corpus."""
    import numpy as np

    from retrieval_kd.encoders import corpus_embeddings, query_embeddings

    def search(queries: dict) -> dict:
        docs = np.asarray(corpus_embeddings(model, collection.corpus, max_seq_length, encoding=encoding))
        q_emb = np.asarray(query_embeddings(model, queries, max_seq_length, encoding=encoding))
        ids = collection.corpus.ids
        top = np.argsort(-(q_emb @ docs.T), axis=1)[:, :11]
        return {q: [ids[i] for i in row] for q, row in zip(queries, top)}
    return search


def sparse_ranking(folder: Path, ref: str):
    """``search`` of :func:`teacher_dev` for a sparse student's index folder."""
    from retrieval_kd.search.retriever import Retriever

    def search(queries: dict) -> dict:
        run = Retriever(folder, dataset=ref).search_run(queries, 11)
        return {q: sorted(run.get(q, {}), key=lambda d: (-run[q][d], d)) for q in queries}
    return search


def per_query(collection, run) -> dict:
    from retrieval_kd.eval import evaluate

    level = collection.conventions.relevance_level
    result = evaluate(collection.qrels("test"), run, ["ndcg@10"], level)
    return {"mean": round(result.scores["ndcg@10"], 4), "per_query": result.per_query["ndcg@10"]}


def seed_mean(scored: list[dict]) -> dict:
    """Per-query nDCG@10 averaged over seeds (``scored``: :func:`per_query` results of one row)."""
    return {q: sum(s["per_query"][q] for s in scored) / len(scored) for q in scored[0]["per_query"]}


def paired_p(a: dict, b: dict) -> float:
    """Two-sided paired t-test p of per-query nDCG@10 (queries of both)."""
    from scipy.stats import ttest_rel

    common = sorted(set(a) & set(b))
    return float(ttest_rel([a[q] for q in common], [b[q] for q in common]).pvalue)


# -- one dataset -------------------------------------------------------------------------------------------------
def run_dataset(args, ref: str, overrides: dict, results: dict, meta: dict) -> None:
    from retrieval_kd.data import load_collection
    from retrieval_kd.queries import read_query_set
    from retrieval_kd.search import bm25_index_for

    name = Path(ref).name
    work = args.work / name
    if args.smoke:
        ref = slice_collection(load_collection(ref), work / "slice")
    collection = load_collection(ref)
    rows, info = results.setdefault(name, {}), meta.setdefault(name, {"dataset": ref})
    # trained folders carry the teachers in their settings hash unless they are the default ones
    # and the queries file unless they are crops
    extra = {**({} if args.teachers == TEACHERS else {"teachers": args.teachers}),
             **({"queries": " ".join(map(str, args.queries))} if args.queries else {})}
    tag = settings_tag({**overrides, **extra})
    per_q = {}
    seq = 64 if args.smoke else 256

    def record(row: str, runs: list[tuple[int | None, dict]]):
        scored = [(seed, per_query(collection, run)) for seed, run in runs]
        rows[row] = round(sum(s["mean"] for _, s in scored) / len(scored), 4)
        per_q[row] = seed_mean([s for _, s in scored])
        info.setdefault("rows", {})[row] = {"seeds": {str(seed): s["mean"] for seed, s in scored}}
        print(json.dumps({f"{name}.{row}": rows[row], "seeds": info["rows"][row]["seeds"]}), flush=True)

    record("bm25", [(None, bm25_index_for(collection).search(collection.queries("test"), 1000))])
    if "init_dense" in args.rows:
        from retrieval_kd.students import load_config

        record("init_dense", [(None, dense_run(load_config(args.dense_config).model, collection, seq,
                                               args.encoding))])
    needs_queries = {"label_free_dense", "label_free_sparse", "labeled_plus_generated_dense"} & set(args.rows)
    if needs_queries:
        t0 = time.perf_counter()
        queries_file = make_queries(args, collection, work)
        store = work / "scores"
        fingerprint = teach(collection, queries_file, None, store, args.top_k, args.encoding, args.teachers)
        info["teacher_dev"] = info.get("teacher_dev", {})
        from retrieval_kd.students import load_config

        init_model = load_config(args.dense_config).model
        info["teacher_dev"][f"init_dense{tag}"] = teacher_dev(dense_ranking(init_model, collection, seq, args.encoding),
                                                        collection, queries_file, store, fingerprint, 0)
        info["queries"] = {"file": str(queries_file), "counts": read_query_set(queries_file).counts,
                           **({"from": [str(path) for path in args.queries]} if args.queries else
                              {"method": args.method, "per_document": args.per_document}),
                           "round_trip_k": args.round_trip_k, "seconds_to_teacher_scores":
                           round(time.perf_counter() - t0, 1)}
        base = {**DENSE_TRAIN, **VARIANTS[args.variant], **overrides, "data.dataset": ref,
                "data.store": str(store), "data.teacher": fingerprint, "data.queries": str(queries_file),
                "data.dev_fraction": 0.0 if args.smoke else 0.1}
    def record_mixed(row: str, folders: list[tuple[int, Path]], dev_signal=None):
        """Rows ``<row>_sw<W>``: each seed's trained folder mixed with the start (``--start-weights``)."""
        from retrieval_kd.students import load_config
        from retrieval_kd.students.interpolate import interpolate_student

        start = load_config(args.dense_config, overrides).model
        for weight in args.start_weights:
            runs = []
            for seed, out in folders:
                mixed = out.with_name(f"{out.name}-sw{weight:g}")
                interpolate_student(start, out, weight, mixed)  # kept when it mixes these weights already
                runs.append((seed, dense_run(str(mixed), collection, seq, args.encoding)))
                if dev_signal is not None:
                    info["teacher_dev"][mixed.name] = dev_signal(mixed, seed)
            record(f"{row}_sw{weight:g}", runs)
            per_q_tests[f"{row}_sw{weight:g}"] = row

    per_q_tests = {}
    for row, kind in (("label_free_dense", "dense"), ("label_free_sparse", "sparse")):
        if row not in args.rows:
            continue
        runs, folders = [], []
        for seed in args.seeds:
            out = work / f"{row}-{args.variant}-s{seed}{tag}"
            if kind == "dense":
                summary = train(kind, args.dense_config, {**base, "training.seed": seed, "output_dir": str(out)})
                runs.append((seed, dense_run(str(out), collection, seq, args.encoding)))
                folders.append((seed, out))
                info["teacher_dev"][out.name] = teacher_dev(dense_ranking(str(out), collection, seq, args.encoding),
                                                            collection, queries_file, store, fingerprint, seed)
            else:
                sparse = {**SPARSE_TRAIN, **{k: v for k, v in base.items() if k.startswith("data.")},
                          **VARIANTS[args.variant], **overrides, "training.seed": seed, "output_dir": str(out),
                          "idf_file": str(work / "idf.json")}
                summary = train(kind, args.sparse_config, sparse)
                folder = work / f"{out.name}-index"
                runs.append((seed, sparse_run(str(out), collection, ref, folder, args.encoding)))
                info["teacher_dev"][out.name] = teacher_dev(sparse_ranking(folder, ref), collection, queries_file,
                                                            store, fingerprint, seed)
            print(json.dumps({"teacher_dev": {out.name: info["teacher_dev"][out.name],
                                              "init_dense": info["teacher_dev"][f"init_dense{tag}"]}}), flush=True)
            info.setdefault("train", {})[out.name] = {
                "variant": args.variant, "settings": {**VARIANTS[args.variant], **overrides}, "teachers": args.teachers,
                "dev": summary.get("dev"),
                "train_seconds": summary.get("train_seconds"), "steps": summary.get("steps")}
        record(row, runs)
        if folders:
            record_mixed(row, folders, lambda folder, seed: teacher_dev(
                dense_ranking(str(folder), collection, seq, args.encoding), collection, queries_file, store,
                fingerprint, seed))
    if {"labeled_dense", "labeled_plus_generated_dense"} & set(args.rows):
        if "train" not in collection.splits:
            raise SystemExit(f"{name}: labelled rows need a train split")
        store = work / "labeled-scores"
        weights = fitted_weights(collection, store, args.top_k, args.encoding, args.teachers)
        labeled_fp = teach(collection, None, "train", store, args.top_k, args.encoding, args.teachers, weights)
        info["labeled_teacher"] = {"members": args.teachers, "weights": weights, "fingerprint": labeled_fp}
        # labeled_dense is today's recipe as its config has it; with the made-up queries the label-free budget
        labeled = {**overrides, "data.dataset": ref, "data.store": str(store), "data.teacher": labeled_fp,
                   "data.dev_fraction": 0.0}
        if "labeled_plus_generated_dense" in args.rows:
            mixed_fp = teach(collection, queries_file, None, store, args.top_k, args.encoding, args.teachers, weights)
            assert mixed_fp == labeled_fp
        for row in ("labeled_dense", "labeled_plus_generated_dense"):
            if row not in args.rows:
                continue
            runs, folders = [], []
            for seed in args.seeds:
                out = work / f"{row}-s{seed}{tag}"
                extra = {} if row == "labeled_dense" else {**DENSE_TRAIN, **VARIANTS[args.variant], **overrides,
                                                            "data.dev_fraction": 0.0, "data.mix_labeled": True,
                                                            "data.queries": str(queries_file)}
                summary = train("dense", args.dense_config, {**labeled, **extra, "training.seed": seed,
                                                             "output_dir": str(out)})
                info.setdefault("train", {})[out.name] = {"train_seconds": summary.get("train_seconds"),
                                                          "settings": overrides, "teachers": args.teachers}
                runs.append((seed, dense_run(str(out), collection, seq, args.encoding)))
                folders.append((seed, out))
            record(row, runs)
            record_mixed(row, folders)
    tests = {}
    for row in per_q:
        for base_row in ("bm25", "init_dense"):
            if row != base_row and base_row in per_q and row not in ("bm25", "init_dense"):
                tests[f"{row} vs {base_row}"] = round(paired_p(per_q[row], per_q[base_row]), 4)
    for row, plain in per_q_tests.items():
        tests[f"{row} vs {plain}"] = round(paired_p(per_q[row], per_q[plain]), 4)
    info.setdefault("paired_t_test_p", {}).update(tests)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("sentence_transformers", "transformers", "httpx", "huggingface_hub", "faiss", "bm25s"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from retrieval_kd.cli.train_cmd import parse_overrides
    from retrieval_kd.data.formats import atomic_write
    from retrieval_kd.utils.hardware import hardware_info

    if args.smoke:
        args.work = args.work / "smoke"
    args.output = args.output or (args.work / "label_free.smoke.json" if args.smoke else
                                  ROOT / "benchmarks" / "results" / "label_free.json")
    overrides = {**(SMOKE if args.smoke else {}), **parse_overrides(args.overrides)}
    meta_file = args.output.with_suffix(".meta.json")
    results = json.loads(args.output.read_text()) if args.output.exists() else {}
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    meta.setdefault("runs", []).append({"command": "python benchmarks/label_free.py", "args": vars(args),
                                        "hardware": hardware_info()})
    for ref in args.datasets:
        if args.dev_carve is not None:
            ref = carve_dev(ref, args.dev_carve, args.work)
        run_dataset(args, ref, overrides, results, meta)
        name = Path(ref).name
        for path, ours in ((args.output, results), (meta_file, meta)):
            # re-read: another run may have written rows since this one started; only this dataset's are ours
            merged = json.loads(path.read_text()) if path.exists() else {}
            merged.setdefault(name, {}).update(ours[name])
            merged.update({k: v for k, v in ours.items() if k not in merged or not isinstance(v, dict)})
            if path == meta_file:
                merged["runs"] = meta["runs"]
            with atomic_write(path) as fh:
                json.dump(merged, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
