"""Bounded work: the heavy endpoints (previews, heat maps) run on a few worker threads with a
short waiting line, and a request that would wait beyond it is refused at once with
:class:`Busy` (503 and ``Retry-After``) instead of queueing without limit. A request whose
client left (its task cancelled) before its turn never starts. The threads may run at a lower
CPU priority than the rest of the service (``nice`` and ``SCHED_IDLE``, Linux, where both are
per thread): the threads they start (PyTorch's OpenMP workers for a heat map) inherit it, so a
busy pool takes only the CPU that the model's batches leave."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
RETRY_AFTER_S = 1  # seconds a refused client is asked to wait: work here takes well under a second


class Busy(Exception):
    """The service's line for this work is full; answered with 503 and ``Retry-After``."""

    def __init__(self, what: str, limit: int):
        super().__init__(f"the service is busy: {what} (at most {limit}); retry in {RETRY_AFTER_S} s")


class WorkerPool:
    """Runs blocking calls on ``workers`` threads, with at most ``max_waiting`` more calls waiting;
    ``nice``: how much lower the threads' CPU priority is than that of the thread that starts them;
    ``idle``: the threads run under ``SCHED_IDLE`` (Linux), only on CPU time the service leaves."""

    def __init__(self, workers: int = 1, max_waiting: int = 8, name: str = "medcls-heavy", nice: int = 0,
                 idle: bool = False):
        if workers < 1 or max_waiting < 0 or nice < 0:
            raise ValueError(f"workers must be at least 1, max_waiting and nice at least 0, "
                             f"got {workers}, {max_waiting}, {nice}")
        self.workers, self.max_waiting = workers, max_waiting
        self._admitted = 0  # running or waiting
        self._slots = asyncio.Semaphore(workers)
        self.priority = thread_priority() + nice
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=set_thread_priority,
                                            initargs=(self.priority, idle))

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


def thread_priority() -> int:
    """The calling thread's nice value (Linux; 0 elsewhere)."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) if sys.platform == "linux" else 0


def set_thread_priority(nice: int, idle: bool = False) -> None:
    """Set the calling thread's nice value (at most 19), and with ``idle`` its scheduling policy to
    ``SCHED_IDLE`` (it runs only on CPU time no other thread wants): on Linux, where both calls with a
    thread id change that thread only; elsewhere they would change the process: nothing."""
    if sys.platform != "linux":
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(nice, 19))
        if idle:
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
    except OSError as exc:  # a container that forbids it: the pool still works, at the same priority
        log.warning("could not lower the priority of the heavy-work threads: %s", exc)
