"""Batching of concurrent requests: items submitted while the model is busy are
run together in the next batch. A lone request never waits for company, so
batching costs nothing at low load and grows with the load."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Runs ``fn(list of items) -> list of results`` on worker threads, at most
    ``max_batch`` items at a time; :meth:`submit` awaits one item's result (raises it,
    if ``fn`` gave an exception as that item's result)."""

    def __init__(self, fn: Callable[[list[T]], list[R]], max_batch: int = 8, workers: int = 1):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.fn, self.max_batch = fn, max_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        # workers=1: batches run one after another, each using all cores itself; more
        # workers suit single-threaded models, one batch per core.
        self._slots = asyncio.Semaphore(workers)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="medcls-batch")

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, item: T) -> R:
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _loop(self) -> None:
        assert self._queue is not None
        while True:
            await self._slots.acquire()
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [(item, fut) for item, fut in batch if not fut.cancelled()]  # clients that went away
            if not batch:
                self._slots.release()
                continue
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
