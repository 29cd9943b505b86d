"""Batching of concurrent requests: items submitted while the model is busy are
run together in the next batch. A lone request never waits for company, so
batching costs nothing at low load and grows with the load.

The line is bounded (``max_pending`` items: beyond it a request is refused with
:class:`~medcls.serving.pool.Busy`), the smallest requests go first (one image does not
wait behind another client's sixteen), and the items of a request whose client left
(its task cancelled) or that already failed are dropped unrun."""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Generic, Sequence, TypeVar

from medcls.serving.pool import Busy

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Runs ``fn(list of items) -> list of results`` on worker threads, at most
    ``max_batch`` items at a time; :meth:`submit_all` awaits one request's results (raises
    the first, if ``fn`` gave an exception as an item's result)."""

    def __init__(self, fn: Callable[[list[T]], list[R]], max_batch: int = 8, workers: int = 1,
                 max_pending: int | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.fn, self.max_batch, self.max_pending = fn, max_batch, max_pending
        self._requests: list[deque[tuple[T, asyncio.Future]]] = []  # waiting items, one deque per request
        self._pending = 0  # items submitted and not yet answered or dropped
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        # workers=1: batches run one after another, each using all cores itself; more
        # workers suit single-threaded models, one batch per core.
        self._slots = asyncio.Semaphore(workers)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="medcls-batch")

    @property
    def pending(self) -> int:
        """Items submitted and not yet answered (or dropped)."""
        return self._pending

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._ready = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, item: T) -> R:
        """One item's result."""
        [result] = await self.submit_all([item])
        return result

    async def submit_all(self, items: Sequence[T]) -> list[R]:
        """The results of one request's ``items``, in order. All are admitted or none: :class:`Busy`
        at once if more than ``max_pending`` items would wait. After the first failure (or a
        cancellation: the client left) the request's remaining items are dropped, not run."""
        if self._ready is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if self.max_pending is not None and self._pending + len(items) > self.max_pending:
            raise Busy("too many images waiting for the model", self.max_pending)
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending += len(futures)
        for future in futures:
            future.add_done_callback(self._settled)
        self._requests.append(deque(zip(items, futures)))
        self._ready.set()
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                future.cancel()  # no-op for the answered ones

    def _settled(self, future: asyncio.Future) -> None:
        self._pending -= 1

    async def _next_batch(self) -> list[tuple[T, asyncio.Future]]:
        assert self._ready is not None
        while True:
            live = (deque(entry for entry in request if not entry[1].done()) for request in self._requests)
            self._requests = [request for request in live if request]
            if self._requests:
                break
            self._ready.clear()
            await self._ready.wait()
        batch: list[tuple[T, asyncio.Future]] = []
        for request in sorted(self._requests, key=len):  # the smallest first; stable: first come among equals
            while request and len(batch) < self.max_batch:
                batch.append(request.popleft())
        return batch

    async def _loop(self) -> None:
        while True:
            await self._slots.acquire()
            batch = await self._next_batch()
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list) -> None:
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.fn, [item for item, _ in batch])
        except Exception as exc:  # noqa: BLE001  hand any failure to the waiting requests
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        finally:
            self._slots.release()
        for (_, fut), result in zip(batch, results):
            if not fut.done():
                if isinstance(result, BaseException):  # this item's own failure
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
