"""The teacher both student benchmarks use: candidates, member scores (shared between stores), fitted ensemble."""

from __future__ import annotations

import logging
from pathlib import Path

from retrieval_kd.data import write_run
from retrieval_kd.teachers import (
    EnsembleTeacher,
    ScoreStore,
    fit_weights,
    mine_candidates,
    parse_teacher,
    score_candidates,
)

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = ["bm25", "bi-encoder:sentence-transformers/all-MiniLM-L6-v2", "splade:rkd-local/splade-tiny"]
# stores that earlier runs filled: a member already scored there is copied, not scored again
OTHER_STORES = [ROOT / "experiments" / "scifact-dense" / "scores", ROOT / "experiments" / "scifact-sparse" / "scores"]


def heterogeneous_teacher(collection, split: str, store: Path, specs=MEMBERS, fit: bool = True, k: int = 100):
    """BM25 top-``k`` candidates + judged positives of ``split``, each member's scores, and their per-query
    min-max ensemble with weights fitted on ``split`` (a training split: never test). Returns (teacher, weights)."""
    candidates = mine_candidates(collection, split, k=k, sources=("bm25",))
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    write_run(candidates, store.parent / f"{split}-cands.run", tag="candidates")
    members = [parse_teacher(s) for s in specs]
    runs = []
    for m in members:
        with ScoreStore(store) as s:
            for other in OTHER_STORES:
                if not s.done_queries(m.fingerprint) and Path(other, ScoreStore.MAIN).exists() and other != store:
                    s.import_teacher(other, m.fingerprint)
        score_candidates(m, collection, candidates, store)
        with ScoreStore(store) as s:
            runs.append(s.get(m.fingerprint))
    weights = None
    if fit:
        weights, value = fit_weights(runs, collection.qrels(split), "minmax", step=0.1)
        logging.info("ensemble weights fitted on %s: %s (train nDCG@10 %.4f)", split, weights, value)
    teacher = EnsembleTeacher(members, weights, normalization="minmax")
    score_candidates(teacher, collection, candidates, store)
    return teacher, weights
