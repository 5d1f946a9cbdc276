"""Scoring a collection's candidates with teachers into the score store: resumable and shardable.

:func:`score_candidates` walks the queries of a candidate run in a fixed order, skips queries the store marks
done for this teacher, scores the rest in small batches and commits each batch in one transaction. Killed at
any moment, a rerun loses nothing and duplicates nothing.

Under ``torchrun --nproc_per_node N`` (``RANK`` / ``WORLD_SIZE`` set), rank ``r`` scores every N-th query from
position ``r``, writes to its own shard file, and after a barrier rank 0 merges the shards: the store then
equals a single-process run's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

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
        return _combine_ensemble(teacher, store_dir, rank)

    teacher.prepare(collection)
    shard = rank if world_size > 1 else None
    summary = {"teacher": teacher.name, "fingerprint": teacher.fingerprint, "scored": 0, "skipped": 0}
    with ScoreStore(store_dir, shard=shard) as store:
        store.register(teacher.fingerprint, teacher.name, teacher.config())
        done = store.done_queries(teacher.fingerprint)
        if shard is not None:
            with ScoreStore(store_dir) as main:
                done |= main.done_queries(teacher.fingerprint)
        order = sorted(candidates)
        mine = [q for i, q in enumerate(order) if i % world_size == rank]
        todo = [q for q in mine if q not in done]
        summary["skipped"] = len(mine) - len(todo)
        batches = [todo[i:i + batch_queries] for i in range(0, len(todo), batch_queries)]
        for batch in progress(batches, desc=f"{teacher.name} [rank {rank}]", unit="batch"):
            items, ids_per_query = [], []
            for qid in batch:
                ids = [d for d, _ in sorted(candidates[qid].items(), key=lambda kv: (-kv[1], kv[0]))]
                items.append((queries[qid], ids, collection.corpus.texts(ids) if ids else []))
                ids_per_query.append(ids)
            results = teacher.score_batch(items)
            store.put_many(teacher.fingerprint, {
                qid: dict(zip(ids, map(float, scores))) for qid, ids, scores in zip(batch, ids_per_query, results)
            })
            summary["scored"] += len(batch)
    _barrier(world_size)
    if world_size > 1 and rank == 0:
        with ScoreStore(store_dir) as main:
            main.merge_shards()
    _barrier(world_size)
    with ScoreStore(store_dir) as store:
        summary["pairs"] = store.count(teacher.fingerprint)
    logger.info("%s: scored %d queries, skipped %d already done; %d pairs stored", teacher.name,
                summary["scored"], summary["skipped"], summary["pairs"])
    return summary


def _combine_ensemble(teacher: EnsembleTeacher, store_dir, rank: int) -> dict:
    with ScoreStore(store_dir) as store:
        if rank == 0:
            runs = [store.get(m.fingerprint) for m in teacher.members]
            combined = teacher.combine(runs)
            store.register(teacher.fingerprint, teacher.name, teacher.config())
            done = store.done_queries(teacher.fingerprint)
            store.put_many(teacher.fingerprint, {q: s for q, s in combined.items() if q not in done})
        pairs = store.count(teacher.fingerprint)
    return {"teacher": teacher.name, "fingerprint": teacher.fingerprint, "pairs": pairs}
