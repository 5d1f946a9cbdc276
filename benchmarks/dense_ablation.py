"""Dense students ablation on SciFact: samplers and losses at one training budget, two seeds each.

Usage:
    python benchmarks/dense_ablation.py make-pack PACK     # here: model, SciFact, teacher scores, query clusters
    python benchmarks/dense_ablation.py run PACK OUT       # on any machine with torch + sentence-transformers
    python benchmarks/dense_ablation.py evaluate OUT/ablation_runs.json.gz [MORE.json.gz]   # ranx nDCG@10

Every run starts from the same all-MiniLM-L6-v2 weights and trains on the same teacher-scored SciFact train pairs
(BM25 + MiniLM min-max ensemble, ``rkd teach``) for the same number of steps; the topic clusters are computed once
(FAISS k-means) and shared, so runs differ only in what the ablation names. ``run`` first picks the learning rate
on the *dev* queries (held-out train queries, never test) for Margin-MSE + TAS-Balanced, then trains:

* samplers, with Margin-MSE: random batches, topic-aware, TAS-Balanced;
* losses, with TAS-Balanced: Margin-MSE, listwise KL, dual teacher (pairwise + in-batch), no teacher (MNRL);
* one bf16 + gradient-checkpointing run where CUDA exists (a check that those trainer features work).

Each trained model encodes the SciFact test corpus (256 tokens) and its top-100 per query is kept; ``evaluate``
scores them with ranx. The pack's model is stored in float16 to fit the device machine's transfer limit, so
this table has its own "init" row (the same float16 weights, undistilled) and is compared only within itself.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLERS = ["random", "topic", "tas-balanced"]
LOSSES = ["margin-mse", "kl", "dual", "mnrl"]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SMOKE_DOCS = None  # --smoke: encode only this many test documents


def make_pack(pack: Path, store: Path) -> None:
    """Everything a run needs, small enough to travel: fp16 model, SciFact, the ensemble's scores, clusters."""
    from sentence_transformers import SentenceTransformer

    from retrieval_kd.data import load_collection
    from retrieval_kd.encoders import query_embeddings
    from retrieval_kd.students.sampler import cluster_queries
    from retrieval_kd.teachers import ScoreStore

    pack.mkdir(parents=True, exist_ok=True)
    model = SentenceTransformer(MODEL)
    model.half()
    model.save(str(pack / "model"))
    c = load_collection("scifact")
    beir = pack / "scifact"
    (beir / "qrels").mkdir(parents=True, exist_ok=True)
    shutil.copy(c.corpus.path, beir / c.corpus.path.name)
    shutil.copy(c.queries_path, beir / "queries.jsonl")
    for split in ("train", "test"):
        shutil.copy(c.qrels_paths[split], beir / "qrels" / f"{split}.tsv")
    qrels = c.qrels("train")
    with ScoreStore(store) as src:
        fp = src.resolve("ensemble")
        run = src.get(fp, qids=list(qrels))
        name = src.teachers()[fp]["name"]
    out = pack / "scores"
    if out.exists():
        shutil.rmtree(out)
    with ScoreStore(out) as dst:
        dst.register(fp, name, {})
        dst.put_many(fp, run)
    train_q = sorted(run)
    emb = query_embeddings(MODEL, {q: c.all_queries[q] for q in train_q}, 256)
    clusters = dict(zip(train_q, cluster_queries(emb, max(1, len(train_q) // 32), seed=42).tolist()))
    (pack / "clusters.json").write_text(json.dumps(clusters))
    print(f"pack at {pack}: teacher {fp}, {len(run)} queries, {len(set(clusters.values()))} clusters")


def _config(pack: Path, out: Path, name: str, loss: str, sampler: str, seed: int, lr: float, epochs: int, extra=None,
            inbatch_teacher: str = "store"):
    from retrieval_kd.students import load_config

    model = str(out / "model-fp32")
    values = {
        "name": name, "model": model, "max_seq_length": 256, "train_max_length": 128,
        "output_dir": str(out / "models" / name), "resume": "never",
        "data": {"dataset": str(pack / "scifact"), "split": "train", "store": str(pack / "scores"),
                 "teacher": "ensemble", "max_negatives": 30, "dev_fraction": 0.1, "dev_max_queries": 40},
        "loss": {"name": loss, "inbatch_teacher": model if inbatch_teacher == "model" else "store"},
        "sampler": {"kind": sampler, "clusters_file": str(pack / "clusters.json"), "cluster_model": model},
        "training": {"num_train_epochs": epochs, "per_device_train_batch_size": 32, "learning_rate": lr,
                     "warmup_steps": 0.1, "logging_steps": 5, "save_strategy": "no", "seed": seed,
                     "report_to": "none", **(extra or {})},
    }
    return load_config(values)


def _test_run(model_dir: str, collection, k: int = 100) -> dict:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir)
    model.max_seq_length = 256
    queries = collection.queries("test")
    ids = collection.corpus.ids[:SMOKE_DOCS]
    d = model.encode(collection.corpus.texts(ids), batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
    q = model.encode(list(queries.values()), batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
    scores = q @ d.T
    top = np.argsort(-scores, axis=1)[:, :k]
    return {qid: {ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(queries)}


def run(pack: Path, out: Path, seeds: list[int], lrs: list[float], epochs: int, max_steps: int = -1,
        work: Path | None = None, only: list[str] | None = None, inbatch_teacher: str = "store") -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    from retrieval_kd.data import load_collection
    from retrieval_kd.students import train_dense

    out.mkdir(parents=True, exist_ok=True)
    # the pack's float16 weights, widened once to float32: every run trains float32 master weights
    work = work or out
    model32 = work / "model-fp32"
    SentenceTransformer(str(pack / "model")).float().save(str(model32))
    collection = load_collection(str(pack / "scifact"))
    runs, summaries = {"init": _test_run(str(model32), collection)}, {}

    def train(name, loss, sampler, seed, lr, extra=None):
        t0 = time.perf_counter()
        config = _config(pack, work, name, loss, sampler, seed, lr, epochs, {"max_steps": max_steps, **(extra or {})},
                         inbatch_teacher)
        summary = train_dense(config, collection)
        runs[name] = _test_run(config.output_dir, collection)
        summary.pop("log_history", None)
        summaries[name] = {**summary, "seconds_with_test_encoding": round(time.perf_counter() - t0, 1),
                           "loss": loss, "sampler": sampler, "seed": seed, "lr": lr, "epochs": epochs}
        shutil.rmtree(config.output_dir, ignore_errors=True)
        logging.info("%s: dev ndcg@10 %.4f", name, summary["dev"].get("dev_cosine_ndcg@10", float("nan")))
        _dump(out, runs, summaries)

    if only:
        # a few named runs at a given learning rate, e.g. ["dual:tas-balanced"]; "+bf16" adds bf16 + checkpointing
        for spec in only:
            loss, _, sampler = spec.partition(":")
            bf16 = sampler.endswith("+bf16")
            sampler = sampler.removesuffix("+bf16") or "tas-balanced"
            for seed in ([seeds[0]] if bf16 else seeds):
                extra = {"bf16": True, "gradient_checkpointing": True, "max_steps": 20} if bf16 else None
                train(f"{loss}-{sampler}-s{seed}" + ("-bf16-gc" if bf16 else ""), loss, sampler, seed, lrs[0], extra)
        _dump(out, runs, summaries)
        return
    # learning rate chosen on the dev queries (held-out train queries), Margin-MSE + TAS-Balanced, first seed
    dev = {}
    for lr in lrs:
        name = f"lr{lr:g}-margin-mse-tas-balanced-s{seeds[0]}"
        train(name, "margin-mse", "tas-balanced", seeds[0], lr)
        dev[lr] = summaries[name]["dev"].get("dev_cosine_ndcg@10", 0.0)
    lr = max(dev, key=dev.get)
    summaries["_chosen_lr"] = {"lr": lr, "dev_ndcg@10": dev}
    for seed in seeds:
        for sampler in SAMPLERS:
            name = f"margin-mse-{sampler}-s{seed}"
            if sampler == "tas-balanced" and seed == seeds[0]:
                runs[name] = runs[f"lr{lr:g}-margin-mse-tas-balanced-s{seed}"]
                summaries[name] = summaries[f"lr{lr:g}-margin-mse-tas-balanced-s{seed}"]
                continue
            train(name, "margin-mse", sampler, seed, lr)
        for loss in LOSSES[1:]:
            train(f"{loss}-tas-balanced-s{seed}", loss, "tas-balanced", seed, lr)
    if torch.cuda.is_available():
        train("bf16-gradient-checkpointing", "margin-mse", "tas-balanced", seeds[0], lr,
              {"bf16": True, "gradient_checkpointing": True})
    _dump(out, runs, summaries)


def _dump(out: Path, runs: dict, summaries: dict) -> None:
    import platform

    meta = {"python": platform.python_version(), "machine": platform.machine()}
    try:
        import sentence_transformers
        import torch
        import transformers

        meta.update(torch=torch.__version__, transformers=transformers.__version__,
                    sentence_transformers=sentence_transformers.__version__,
                    device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    except Exception:  # noqa: BLE001
        pass
    tmp = out / ".ablation_runs.json.gz.tmp"
    with gzip.open(tmp, "wt") as fh:
        json.dump({"runs": runs, "summaries": summaries, "meta": meta}, fh)
    os.replace(tmp, out / "ablation_runs.json.gz")


def evaluate_runs(paths: list[Path], output: Path) -> None:
    """Score every run with ranx; a later file's runs are added under "<name> (<file stem>)" when names clash."""
    import numpy as np

    from retrieval_kd.data import load_collection
    from retrieval_kd.data.formats import atomic_write
    from retrieval_kd.eval import evaluate

    runs, summaries, metas = {}, {}, []
    for i, path in enumerate(paths):
        with gzip.open(path, "rt") as fh:
            data = json.load(fh)
        tag = "" if i == 0 else f"@{path.name.split('.')[0]}"
        for name, run in data["runs"].items():
            if name == "init" and i > 0:
                continue
            runs[name + tag] = run
            summaries[name + tag] = data["summaries"].get(name, {})
        metas.append(data["meta"])
    c = load_collection("scifact")
    qrels = c.qrels("test")
    ndcg = {name: evaluate(qrels, run, ["ndcg@10"], 1).scores["ndcg@10"] for name, run in runs.items()}
    groups = {f"sampler={s}, loss=margin-mse": [f"margin-mse-{s}-s{x}" for x in (1, 2)] for s in SAMPLERS}
    groups.update({f"sampler=tas-balanced, loss={m}": [f"{m}-tas-balanced-s{x}" for x in (1, 2)] for m in LOSSES[1:]})
    for path in paths[1:]:
        tag = f"@{path.name.split('.')[0]}"
        extra = sorted({n[: n.rindex("-s")] for n in ndcg if n.endswith(tag) and "-s" in n and "bf16" not in n})
        for base in extra:
            groups[f"{base} ({path.name.split('.')[0]})"] = [f"{base}-s{x}{tag}" for x in (1, 2)]
    rows = {}
    for label, names in groups.items():
        vals = [ndcg[n] for n in names if n in ndcg]
        if vals:
            rows[label] = {"ndcg@10": [round(v, 4) for v in vals], "mean": round(float(np.mean(vals)), 4),
                           "spread": round(float(np.max(vals) - np.min(vals)), 4)}
    result = {"init_fp16": round(ndcg["init"], 4), "rows": rows, "all": {k: round(v, 4) for k, v in ndcg.items()},
              "chosen_lr": summaries.get("_chosen_lr"), "meta": metas,
              "train_seconds": {k: v.get("train_seconds") for k, v in summaries.items() if not k.startswith("_")}}
    with atomic_write(output) as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps({k: result[k] for k in ("init_fp16", "rows")}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make-pack")
    p.add_argument("pack", type=Path)
    p.add_argument("--store", type=Path, default=ROOT / "experiments" / "scifact-dense" / "scores")
    r = sub.add_parser("run")
    r.add_argument("pack", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    r.add_argument("--lrs", type=float, nargs="+", default=[3e-5, 1e-4])
    r.add_argument("--epochs", type=int, default=2)
    r.add_argument("--max-steps", type=int, default=-1, help="cap every run (smoke tests)")
    r.add_argument("--work", type=Path, default=None, help="models go here (default: OUT)")
    r.add_argument("--only", nargs="+", default=None, metavar="LOSS:SAMPLER",
                   help="just these runs at the first --lrs value (LOSS:SAMPLER[+bf16])")
    r.add_argument("--inbatch-teacher", choices=["store", "model"], default="store",
                   help="dual teacher's in-batch scores: the ensemble's stored scores, or MiniLM's embeddings")
    r.add_argument("--smoke", action="store_true", help="encode 100 test documents only (a quick check)")
    e = sub.add_parser("evaluate")
    e.add_argument("runs", type=Path, nargs="+", help="run files of `run` (later files add their runs)")
    e.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "dense_ablation.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("sentence_transformers", "transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.cmd == "make-pack":
        make_pack(args.pack, args.store)
    elif args.cmd == "run":
        global SMOKE_DOCS
        SMOKE_DOCS = 100 if args.smoke else None
        run(args.pack, args.out, args.seeds, args.lrs, args.epochs, args.max_steps, args.work, args.only,
            args.inbatch_teacher)
    else:
        evaluate_runs(args.runs, args.output)


if __name__ == "__main__":
    main()
