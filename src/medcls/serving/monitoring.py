"""Monitoring of the service for Prometheus: ``GET /metrics`` in the text exposition format.

- ``medcls_requests_total{endpoint,status}`` and ``medcls_request_seconds{endpoint,status}``
  (a latency histogram), by route template (``/v1/predict``), not by raw path, so that stray
  URLs cannot grow the label set;
- ``medcls_predictions_total{class}``, ``medcls_ood_flagged_total``;
- ``medcls_ood_flagged_rate``: the share of the last :data:`WINDOW` predicted images flagged
  out-of-distribution, ``medcls_ood_expected_rate``: the share flagged on validation (the
  detector's ``flag_rate``), and ``medcls_drift`` (1 while the two disagree).

Drift: once the window is full, the rolling rate is compared with the validation rate; it
"leaves" it when the difference is more than :data:`SIGMAS` binomial standard deviations of a
window at the validation rate (200 images at 5%: a margin of 0.046). Without drift that
happens in under 0.3% of windows. A drift is logged as a warning when it starts and when it
ends, and ``/healthz`` reports it (``"status": "drift"``, with the rates).

Each service has its own registry (no process-wide state): two apps in one process, as in
the tests, do not share counters.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Iterable, Optional

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

WINDOW = 200  # images in the rolling flagged rate
SIGMAS = 3.0
# Latency buckets (seconds): one image on the CPU takes 15-40 ms, a full request of 16 up to seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Monitor:
    """The service's metrics and the rolling OOD-flag drift check."""

    def __init__(self, classes: list[str], expected_flag_rate: Optional[float], window: int = WINDOW,
                 sigmas: float = SIGMAS):
        self.registry = CollectorRegistry()
        self.requests = Counter("medcls_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("medcls_request_seconds", "HTTP request latency", ["endpoint", "status"],
                                 buckets=BUCKETS, registry=self.registry)
        self.predictions = Counter("medcls_predictions", "images predicted, by class", ["class"],
                                   registry=self.registry)
        self.flagged = Counter("medcls_ood_flagged", "images flagged out-of-distribution", registry=self.registry)
        self.rate = Gauge("medcls_ood_flagged_rate", f"share of the last {window} images flagged out-of-distribution",
                          registry=self.registry)
        self.expected = Gauge("medcls_ood_expected_rate", "share flagged on validation", registry=self.registry)
        self.drift = Gauge("medcls_drift", "1 while the rolling flagged rate leaves the validation rate",
                           registry=self.registry)
        for c in classes:
            self.predictions.labels(c)  # every class appears from the first scrape, at 0
        self.expected_rate, self.window = expected_flag_rate, window
        self.margin = (None if expected_flag_rate is None
                       else sigmas * math.sqrt(expected_flag_rate * (1 - expected_flag_rate) / window))
        if expected_flag_rate is not None:
            self.expected.set(expected_flag_rate)
        self._flags: deque[bool] = deque(maxlen=window)
        self._drifting = False
        self._lock = threading.Lock()

    def observe(self, predictions: Iterable) -> None:
        """Count predicted images (:class:`~medcls.inference.predictor.Prediction`) and update the drift check."""
        with self._lock:
            for p in predictions:
                self.predictions.labels(p.prediction).inc()
                if p.in_distribution is None:
                    continue
                self.flagged.inc(not p.in_distribution)
                self._flags.append(not p.in_distribution)
            if self._flags:
                self.rate.set(sum(self._flags) / len(self._flags))
            self._check()

    def _check(self) -> None:
        if self.margin is None or len(self._flags) < self.window:
            return
        rate = sum(self._flags) / len(self._flags)
        drifting = abs(rate - self.expected_rate) > self.margin
        if drifting != self._drifting:
            self._drifting = drifting
            self.drift.set(int(drifting))
            if drifting:
                log.warning("drift: %.1f%% of the last %d images flagged out-of-distribution, %.1f%% on validation "
                            "(margin %.1f points): inputs differ from the training data; check the site, "
                            "see MODEL_CARD.md", 100 * rate, self.window, 100 * self.expected_rate, 100 * self.margin)
            else:
                log.warning("drift over: %.1f%% of the last %d images flagged, within %.1f points of validation's "
                            "%.1f%%", 100 * rate, self.window, 100 * self.margin, 100 * self.expected_rate)

    def health(self) -> dict:
        """The drift facts ``/healthz`` reports."""
        with self._lock:
            n = len(self._flags)
            return {"status": "drift" if self._drifting else "ok",
                    "ood_flagged_rate": sum(self._flags) / n if n else None, "ood_window": n,
                    "ood_window_size": self.window, "ood_expected_rate": self.expected_rate,
                    "ood_drift_margin": self.margin}

    def router(self) -> APIRouter:
        """``GET /metrics``."""
        router = APIRouter()

        @router.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        return router


class MetricsMiddleware:
    """ASGI middleware counting and timing every HTTP request by route template and status
    (``app.add_middleware(MetricsMiddleware, monitor=...)``)."""

    def __init__(self, app, monitor: Monitor):
        self.app, self.monitor = app, monitor

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]  # 500: no response started (an exception)

        async def keep_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, keep_status)
        finally:
            route = scope.get("route")  # set by the router on the scope it was given
            endpoint = getattr(route, "path", None) or "unmatched"
            self.monitor.requests.labels(endpoint, str(status[0])).inc()
            self.monitor.latency.labels(endpoint, str(status[0])).observe(time.perf_counter() - started)
