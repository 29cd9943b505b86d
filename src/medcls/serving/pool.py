"""Bounded work: the heavy endpoints (previews, heat maps) run on a few worker threads with a
short waiting line, and a request that would wait beyond it is refused at once with
:class:`Busy` (503 and ``Retry-After``) instead of queueing without limit. A request whose
client left (its task cancelled) before its turn never starts."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")
RETRY_AFTER_S = 1  # seconds a refused client is asked to wait: work here takes well under a second


class Busy(Exception):
    """The service's line for this work is full; answered with 503 and ``Retry-After``."""

    def __init__(self, what: str, limit: int):
        super().__init__(f"the service is busy: {what} (at most {limit}); retry in {RETRY_AFTER_S} s")


class WorkerPool:
    """Runs blocking calls on ``workers`` threads, with at most ``max_waiting`` more calls waiting."""

    def __init__(self, workers: int = 1, max_waiting: int = 8, name: str = "medcls-heavy"):
        if workers < 1 or max_waiting < 0:
            raise ValueError(f"workers must be at least 1 and max_waiting at least 0, got {workers}, {max_waiting}")
        self.workers, self.max_waiting = workers, max_waiting
        self._admitted = 0  # running or waiting
        self._slots = asyncio.Semaphore(workers)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=name)

    @property
    def admitted(self) -> int:
        """Calls running or waiting now."""
        return self._admitted

    async def run(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` on a worker thread; :class:`Busy` at once if the line is full."""
        limit = self.workers + self.max_waiting
        if self._admitted >= limit:
            raise Busy("too many images being decoded or explained at once", limit)
        self._admitted += 1
        try:
            async with self._slots:  # cancelled while waiting here: the call never starts
                return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._admitted -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
