"""Scoring a collection's candidates with teachers into the score store: resumable, shardable, never stale.

:func:`score_candidates` walks the queries of a candidate run in a fixed order, skips queries the store marks
done for this teacher *with the same context* (query text, corpus, and for listwise teachers the ordered
candidate list) *and the same candidates*, scores the rest in small batches and commits each batch in one
transaction. Killed at any moment, a rerun loses nothing and duplicates nothing. When a query's candidates
change (another ``top_k``, another first stage), a pointwise teacher scores only the new pairs and the pairs no
longer among the candidates are removed; a listwise teacher (FIRST windows, the per-query normalised ensemble)
rescores the query whole. A changed query text or corpus rescores the query whole.

Under ``torchrun --nproc_per_node N`` (``RANK`` / ``WORLD_SIZE`` set), rank ``r`` scores every N-th query from
position ``r``, writes to its own shard file, and after a barrier rank 0 merges the shards: the store then
equals a single-process run's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping

import numpy as np

from retrieval_kd.teachers.base import Teacher
from retrieval_kd.teachers.ensemble import EnsembleTeacher
from retrieval_kd.teachers.store import ScoreStore

logger = logging.getLogger(__name__)

__all__ = ["score_candidates", "distributed_context"]


def distributed_context() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's environment (``(0, 1)`` when not launched by it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _barrier(world_size: int) -> None:
    if world_size <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()


def score_candidates(
    teacher: Teacher,
    collection,
    candidates: Mapping[str, Mapping[str, float]],
    store_dir: str | os.PathLike,
    queries: Mapping[str, str] | None = None,
    batch_queries: int = 8,
    rank: int | None = None,
    world_size: int | None = None,
    show_progress: bool = False,
) -> dict:
    """Score every (query, candidate) pair with ``teacher`` into the store at ``store_dir``.

    Queries go to :meth:`Teacher.score_batch` a batch at a time; candidates are passed to the teacher in
    descending candidate-score order (FIRST's windows follow it).
    An :class:`EnsembleTeacher` scores its members first, then combines their stored scores.

    Returns a summary: fingerprint, queries scored now, queries skipped as done, pairs stored.
    """
    from retrieval_kd.utils.progress import progress

    env_rank, env_world = distributed_context()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    queries = dict(queries) if queries is not None else collection.all_queries
    missing = [q for q in candidates if q not in queries]
    if missing:
        raise KeyError(f"{len(missing)} candidate queries have no text in {collection.name} (e.g. {missing[0]!r})")

    if isinstance(teacher, EnsembleTeacher):
        for member in teacher.members:
            score_candidates(member, collection, candidates, store_dir, queries, batch_queries, rank, world_size,
                             show_progress)
        return _combine_ensemble(teacher, collection, candidates, store_dir, queries, rank)

    teacher.prepare(collection)
    shard = rank if world_size > 1 else None
    corpus_key = collection.corpus.store_path.name if collection.corpus is not None else None
    summary = {"teacher": teacher.name, "fingerprint": teacher.fingerprint, "scored": 0, "skipped": 0,
               "rescored": 0}
    with ScoreStore(store_dir, shard=shard) as store:
        store.register(teacher.fingerprint, teacher.name, teacher.config())
        done = store.done_keys(teacher.fingerprint)
        if shard is not None:
            with ScoreStore(store_dir) as main:
                done = {**main.done_keys(teacher.fingerprint), **done}
        order = sorted(candidates)
        mine = [q for i, q in enumerate(order) if i % world_size == rank]
        ranked = {q: [d for d, _ in sorted(candidates[q].items(), key=lambda kv: (-kv[1], kv[0]))] for q in mine}
        keys = {q: query_keys(teacher, queries[q], ranked[q], corpus_key) for q in mine}
        todo = [q for q in mine if done.get(q) != keys[q]]
        summary["skipped"] = len(mine) - len(todo)
        # a pointwise teacher whose query and corpus are unchanged keeps the scores of candidates it still has
        partial = {q for q in todo if shard is None and not teacher.listwise and q in done and done[q][0] == keys[q][0]}
        stored = store.get(teacher.fingerprint, qids=sorted(partial)) if partial else {}
        stale = [q for q in todo if q in done]
        if stale:
            logger.info("%s: %d queries were scored for other candidates, query texts or corpus; rescoring them "
                        "(%d only their new candidates)", teacher.name, len(stale), len(partial))
        batches = [todo[i:i + batch_queries] for i in range(0, len(todo), batch_queries)]
        for batch in progress(batches, desc=f"{teacher.name} [rank {rank}]", unit="batch"):
            items, ids_per_query, remove = [], [], {}
            for qid in batch:
                ids = ranked[qid]
                if qid in partial:
                    have = stored.get(qid, {})
                    remove[qid] = [d for d in have if d not in set(ids)]
                    ids = [d for d in ids if d not in have]
                items.append((queries[qid], ids, collection.corpus.texts(ids) if ids else []))
                ids_per_query.append(ids)
            results = teacher.score_batch(items)
            scored = {}
            for qid, ids, scores in zip(batch, ids_per_query, results):
                scores = np.asarray(scores, dtype=np.float64).reshape(-1)
                if len(scores) != len(ids):
                    raise RuntimeError(f"{teacher.name} returned {len(scores)} scores for {len(ids)} candidates of "
                                       f"query {qid!r}")
                bad = np.flatnonzero(~np.isfinite(scores))
                if bad.size:
                    raise ValueError(f"{teacher.name}: non-finite score {scores[bad[0]]} for query {qid!r}, doc "
                                     f"{ids[bad[0]]!r} ({bad.size} of its {len(ids)} candidates); nothing of this "
                                     "query was stored; check the teacher's model and inputs")
                scored[qid] = dict(zip(ids, scores.tolist()))
            store.put_many(teacher.fingerprint, scored, keys={q: keys[q] for q in batch},
                           replace=[q for q in batch if q in done and q not in partial], remove=remove)
            summary["scored"] += len(batch)
        summary["rescored"] = len(stale)
    _barrier(world_size)
    if world_size > 1 and rank == 0:
        with ScoreStore(store_dir) as main:
            main.merge_shards()
    _barrier(world_size)
    with ScoreStore(store_dir) as store:
        summary["pairs"] = store.count(teacher.fingerprint)
    logger.info("%s: scored %d queries (%d of them rescored), skipped %d already done; %d pairs stored",
                teacher.name, summary["scored"], summary["rescored"], summary["skipped"], summary["pairs"])
    return summary


def query_keys(teacher: Teacher, query: str, ranked_ids: list[str], corpus_key: str | None) -> tuple[str, str]:
    """``(context, candidates)`` keys of one query's scores: what a stored score of ``teacher`` depends on.

    ``context``: the query text and the corpus (and, for a listwise teacher, the ordered candidate list);
    ``candidates``: the set of candidate doc ids.
    """
    context = {"query": query, "corpus": corpus_key}
    if teacher.listwise:
        context["ranked"] = ranked_ids
    digest = hashlib.sha256(json.dumps(context, sort_keys=True).encode()).hexdigest()[:24]
    cands = hashlib.sha256("\x00".join(sorted(ranked_ids)).encode()).hexdigest()[:24]
    return digest, cands


def _combine_ensemble(teacher: EnsembleTeacher, collection, candidates, store_dir, queries, rank: int) -> dict:
    """The ensemble's scores from its members' stored scores; cheap, so every query is combined again and the
    ones whose key (members' keys, candidates) changed are replaced."""
    corpus_key = collection.corpus.store_path.name if collection.corpus is not None else None
    summary = {"teacher": teacher.name, "fingerprint": teacher.fingerprint, "scored": 0, "rescored": 0}
    with ScoreStore(store_dir) as store:
        if rank == 0:
            qids = sorted(candidates)
            runs = [store.get(m.fingerprint, qids=qids) for m in teacher.members]
            combined = teacher.combine(runs)
            store.register(teacher.fingerprint, teacher.name, teacher.config())
            done = store.done_keys(teacher.fingerprint)
            keys = {}
            for q in combined:
                ranked = [d for d, _ in sorted(candidates[q].items(), key=lambda kv: (-kv[1], kv[0]))]
                keys[q] = query_keys(teacher, queries[q], ranked, corpus_key)
            todo = {q: s for q, s in combined.items() if done.get(q) != keys[q]}
            store.put_many(teacher.fingerprint, todo, keys={q: keys[q] for q in todo}, replace=list(todo))
            summary["scored"], summary["rescored"] = len(todo), sum(q in done for q in todo)
        summary["pairs"] = store.count(teacher.fingerprint)
    return summary
