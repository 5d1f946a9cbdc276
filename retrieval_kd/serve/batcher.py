"""Micro-batching: concurrent requests for one index become one ``search(list)`` call, off the event loop.

Each index has one worker (an asyncio task) and one search thread. A request puts its queries on the worker's
queue and awaits a future; the worker takes the first request, gathers those arriving within ``window_s`` (or
already queued) up to ``max_batch`` queries, searches them in one call per distinct ``(k, with_text)`` in the
search thread, and hands each request its slice of the results. A query encoder then runs once for the whole
batch: on a CPU, encoding 32 queries together costs a fraction of 32 single calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

__all__ = ["MicroBatcher", "BatchStats"]

SearchFn = Callable[[list[str], int, bool], list[list]]


@dataclass
class BatchStats:
    """Counters of one batcher: requests and queries served, ``search`` calls made, the largest batch."""

    requests: int = 0
    queries: int = 0
    search_calls: int = 0
    largest_batch: int = 0

    def to_dict(self) -> dict:
        calls = max(self.search_calls, 1)
        return {"requests": self.requests, "queries": self.queries, "search_calls": self.search_calls,
                "largest_batch": self.largest_batch, "mean_batch": round(self.queries / calls, 2)}


@dataclass
class _Job:
    texts: list[str]
    k: int
    with_text: bool
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Serialises and batches the searches of one retriever.

    Args:
        search: ``search(texts, k, with_text) -> list[list[Hit]]``, one list per text (called in the search thread).
        window_s: seconds to wait after a first request for others (0: take only what is already queued).
        max_batch: queries per batch, at most (a request is never split).
        locks: held around each ``search`` call; a hybrid shares its members' locks, so no model or tokenizer is
            used by two threads at once (Hugging Face fast tokenizers raise "Already borrowed" when they are).
        name: for the thread name and logs.
    """

    def __init__(self, search: SearchFn, window_s: float = 0.0, max_batch: int = 64,
                 locks: Sequence[threading.Lock] = (), name: str = "index"):
        self._search, self.window_s, self.max_batch, self.name = search, float(window_s), int(max_batch), name
        self._locks = sorted(set(locks), key=id)  # one order for every batcher: no deadlock between hybrids
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- life cycle (inside the server's event loop) -----------------------------------------------------------
    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"rkd-search-{self.name}")
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"rkd-batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._task = self._executor = None

    async def run_once(self, texts: list[str], k: int = 1) -> list[list]:
        """One search in the search thread, outside batching and the counters (the start-up warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._locked, texts, k, False)

    # -- requests ----------------------------------------------------------------------------------------------
    async def search(self, texts: list[str], k: int, with_text: bool = False) -> list[list]:
        """The hits of each of ``texts``, searched with whatever other requests arrive meanwhile."""
        if self._queue is None:
            raise RuntimeError(f"batcher {self.name!r} is not started")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(list(texts), int(k), bool(with_text), future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        carry: _Job | None = None
        while True:
            first = carry or await queue.get()
            carry = None
            batch, n = [first], len(first.texts)
            deadline = loop.time() + self.window_s
            while n < self.max_batch:
                if queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(queue.get(), remaining)
                    except (asyncio.TimeoutError, TimeoutError):
                        break
                else:
                    job = queue.get_nowait()
                if n + len(job.texts) > self.max_batch:
                    carry = job  # the first of the next batch
                    break
                batch.append(job)
                n += len(job.texts)
            await self._execute(loop, batch)

    async def _execute(self, loop, batch: list[_Job]) -> None:
        groups: dict[tuple[int, bool], list[_Job]] = {}
        for job in batch:
            if not job.future.done():  # a client that went away is not searched for
                groups.setdefault((job.k, job.with_text), []).append(job)
        for (k, with_text), jobs in groups.items():
            texts = [t for job in jobs for t in job.texts]
            try:
                results = await loop.run_in_executor(self._executor, self._locked, texts, k, with_text)
            except Exception as exc:  # noqa: BLE001 - handed to each waiting request, the worker goes on
                logger.exception("%s: search of %d queries failed", self.name, len(texts))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.stats.search_calls += 1
            self.stats.queries += len(texts)
            self.stats.requests += len(jobs)
            self.stats.largest_batch = max(self.stats.largest_batch, len(texts))
            start = 0
            for job in jobs:
                end = start + len(job.texts)
                if not job.future.done():
                    job.future.set_result(results[start:end])
                start = end

    def _locked(self, texts: list[str], k: int, with_text: bool) -> list[list]:
        with contextlib.ExitStack() as stack:
            for lock in self._locks:
                stack.enter_context(lock)
            results = self._search(texts, k, with_text)
        if len(results) != len(texts):
            raise RuntimeError(f"{self.name}: search returned {len(results)} result lists for {len(texts)} queries")
        return results
