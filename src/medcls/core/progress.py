"""Progress of long library work, for whoever listens: library code says what it is doing and
how far it got (:func:`task`); an entry point installs a listener (:func:`reporting`; the command
line renders the events with rich). Without a listener nothing is shown, and nothing process-wide
changes: the listener is a context variable, set for the duration of a ``with`` block."""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, TypeVar


@dataclass(frozen=True)
class ProgressEvent:
    """One task's state: ``done`` of ``total`` units (``total`` None: unknown, shown as activity);
    ``finished`` once, at the end (also when the work failed)."""
    key: int  # tells apart two tasks with the same description
    description: str
    done: int
    total: Optional[int]
    finished: bool = False


T = TypeVar("T")
PROGRESS_MIN_ITEMS = 256  # fewer images take a second or two: not worth a bar (nor a page request's)
Listener = Callable[[ProgressEvent], None]
_listener: ContextVar[Optional[Listener]] = ContextVar("medcls_progress", default=None)
_keys = itertools.count()


@contextmanager
def reporting(listener: Optional[Listener]) -> Iterator[None]:
    """Send the progress of the work done inside the block to ``listener`` (None: to nobody)."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


@contextmanager
def task(description: str, total: Optional[int] = None, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A unit of long work: yields ``advance(n=1)``; the listener (if any, and if ``enabled``) hears
    the start, each advance and the end."""
    listener = _listener.get() if enabled else None
    if listener is None:
        yield lambda n=1: None
        return
    key, done = next(_keys), 0
    listener(ProgressEvent(key, description, 0, total))

    def advance(n: int = 1) -> None:
        nonlocal done
        done += n
        listener(ProgressEvent(key, description, done, total))

    try:
        yield advance
    finally:
        listener(ProgressEvent(key, description, done, total, finished=True))


def track(items: Iterable[T], description: str, total: Optional[int] = None, enabled: bool = True) -> Iterator[T]:
    """The items of ``items``, one :func:`task` unit each."""
    with task(description, total, enabled) as advance:
        for item in items:
            yield item
            advance()


def batch_starts(n: int, batch_size: int, description: str | None = None) -> Iterator[int]:
    """``range(0, n, batch_size)``, each batch one step of a task of ``n`` images when there are at
    least :data:`PROGRESS_MIN_ITEMS` (default description: running the model on them)."""
    with task(description or f"running the model on {n} images", n, n >= PROGRESS_MIN_ITEMS) as advance:
        for start in range(0, n, batch_size):
            yield start
            advance(min(batch_size, n - start))
