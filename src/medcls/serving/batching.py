"""Batching of concurrent requests: items submitted while the model is busy are
run together in the next batch. A lone request never waits for company, so
batching costs nothing at low load and grows with the load.

The line is bounded (``max_pending`` items: beyond it a request is refused with
:class:`~medcls.serving.pool.Busy`; requests of more than one batch may not fill
the last :data:`RESERVED` of it, kept for small ones), the smallest requests go first
(one image does not wait behind another client's sixteen), a batch is filled only with whole
requests that fit in it (a small request's batch does not grow, and take longer, by another
client's bulk images), right after a batch with small requests a request of more than one
batch runs a quarter batch (a small client that sends its next image meanwhile waits for two
images, not eight), the oldest request
goes first once :data:`PATIENCE` batches in a row passed it over (large requests are not
starved), and the items of a request whose client left (its task cancelled) or that already
failed are dropped unrun.

Measured under benchmarks/hostile_load.py (benchmarks/README.md): with batches filled from the
sixteen-image requests of clients who then hung up, the single-image clients' batches ran 8
images instead of 2-6, each taking 2.7x longer; with whole requests only, a batch of eight
bulk images slid in each time the single-image clients' batch had been answered."""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Generic, Sequence, TypeVar

from medcls.serving.pool import Busy

T = TypeVar("T")
R = TypeVar("R")
RESERVED = 1 / 16  # of the line, kept for requests of one batch or less
PATIENCE = 8  # batches that may pass over the oldest waiting request


class _Request(deque):
    """One request's waiting (item, future) pairs; ``large``: it had more items than one batch."""

    def __init__(self, entries, large: bool):
        super().__init__(entries)
        self.large = large


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
        self.large_batch = max(1, max_batch // 4)  # the batches of a request of more than one batch
        self._requests: list[_Request] = []  # waiting items, one deque per request
        self._pending = 0  # items submitted and not yet answered or dropped
        self._passed_over = 0  # batches in a row that took nothing of the oldest waiting request
        self._small_last = False  # the last batch had items of a request of one batch or less
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
        if self.max_pending is not None:
            limit = self.max_pending - (len(items) > self.max_batch) * int(RESERVED * self.max_pending)
            if self._pending + len(items) > limit:
                raise Busy("too many images waiting for the model", limit)
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending += len(futures)
        for future in futures:
            future.add_done_callback(self._settled)
        self._requests.append(_Request(zip(items, futures), len(items) > self.max_batch))
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
            live = (_Request((entry for entry in request if not entry[1].done()), request.large)
                    for request in self._requests)
            self._requests = [request for request in live if request]
            if self._requests:
                break
            self._ready.clear()
            await self._ready.wait()
        oldest = self._requests[0]
        oldest_waiting = len(oldest)
        if self._passed_over >= PATIENCE:
            order = self._requests  # first come, first served, for once
        else:
            order = sorted(self._requests, key=len)  # the smallest first; stable: first come among equals
        size = self.large_batch if order[0].large and self._small_last else self.max_batch
        batch: list[tuple[T, asyncio.Future]] = []
        self._small_last = False
        for request in order:
            room = size - len(batch)
            if batch and len(request) > room:
                continue  # whole requests only, once the batch has one
            batch.extend(request.popleft() for _ in range(min(room, len(request))))
            self._small_last = self._small_last or not request.large
        self._passed_over = 0 if len(oldest) < oldest_waiting else self._passed_over + 1
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
