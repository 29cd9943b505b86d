"""Where a request's time goes: named stages (reading the upload, waiting in a line, decoding,
the model, a heat map) timed by the service and sent back as a standard ``Server-Timing``
header (milliseconds), so that a load test or a browser's developer tools can split a
latency without access to the server's logs."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


class ServerTiming:
    """One request's stage durations, summed per name in the order first seen."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self.notes: dict[str, str] = {}

    def add(self, name: str, seconds: float, note: str | None = None) -> None:
        """Add ``seconds`` to stage ``name``; ``note``: a description sent with it (e.g. a batch's size)."""
        self.stages[name] = self.stages.get(name, 0.0) + seconds
        if note is not None:
            self.notes[name] = note

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as stage ``name``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def header(self) -> dict[str, str]:
        """The ``Server-Timing`` header, e.g. ``{"Server-Timing": 'wait;dur=3.1, model;dur=80.0;desc="8"'}``."""
        parts = [f"{name};dur={1000 * s:.1f}" + (f';desc="{self.notes[name]}"' if name in self.notes else "")
                 for name, s in self.stages.items()]
        return {"Server-Timing": ", ".join(parts)}


def parse_server_timing(value: str) -> dict[str, tuple[float, str | None]]:
    """``{name: (milliseconds, desc or None)}`` from a ``Server-Timing`` header written by :class:`ServerTiming`."""
    stages = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, *params = (p.strip() for p in part.split(";"))
        fields = dict(p.split("=", 1) for p in params if "=" in p)
        stages[name] = (float(fields.get("dur", 0)), fields["desc"].strip('"') if "desc" in fields else None)
    return stages
