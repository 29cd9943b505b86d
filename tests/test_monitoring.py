"""Prometheus monitoring of the service: a real server on loopback scraped at /metrics after
real uploads, and the rolling OOD-flag drift check (log warning, /healthz)."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import XRAY
from medcls.assets import shipped_model
from medcls.inference.predictor import Prediction
from medcls.models.checkpoint import load_checkpoint, save_checkpoint
from medcls.serving.monitoring import Monitor
from medcls.serving.server import load_app
from test_serve import post, thread_server

pytestmark = pytest.mark.data


def scrape(client) -> dict[tuple[str, tuple], float]:
    res = client.get("/metrics")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(res.text) for s in family.samples}


def test_metrics_count_requests_predictions_and_flags(tmp_path):
    net, info = load_checkpoint(shipped_model())
    model = save_checkpoint(tmp_path / "model.pt", net, dataclasses.replace(info, tta=False))
    files = sorted((XRAY / "test" / "PNEUMONIA").iterdir())[:3] + sorted((XRAY / "test" / "NORMAL").iterdir())[:2]
    uploads = [(f.name, f.read_bytes(), "image/jpeg") for f in files]
    with thread_server(load_app(model)) as c:
        got = [post(c, u).json()["predictions"][0] for u in uploads[:3]] + post(c, *uploads[3:]).json()["predictions"]
        assert post(c, ("x.txt", b"hello", "text/plain")).status_code == 415
        assert c.get("/nowhere").status_code == 404
        health = c.get("/healthz").json()
        m = scrape(c)
    requests = lambda endpoint, status: m.get(("medcls_requests_total", (("endpoint", endpoint),  # noqa: E731
                                                                         ("status", status))), 0)
    assert requests("/v1/predict", "200") == 4 and requests("/v1/predict", "415") == 1
    assert requests("unmatched", "404") == 1 and requests("/healthz", "200") == 1
    hist = ("medcls_request_seconds_count", (("endpoint", "/v1/predict"), ("status", "200")))
    assert m[hist] == 4
    assert m[("medcls_request_seconds_bucket", (("endpoint", "/v1/predict"), ("le", "+Inf"), ("status", "200")))] == 4
    for cls in ("NORMAL", "PNEUMONIA"):
        assert m[("medcls_predictions_total", (("class", cls),))] == sum(p["class"] == cls for p in got)
    flagged = sum(not p["in_distribution"] for p in got)
    assert m[("medcls_ood_flagged_total", ())] == flagged
    assert m[("medcls_ood_flagged_rate", ())] == pytest.approx(flagged / 5)
    assert m[("medcls_ood_expected_rate", ())] == info.ood.flag_rate and m[("medcls_drift", ())] == 0
    assert health["status"] == "ok" and health["ood_window"] == 5 and health["ood_expected_rate"] == 0.05


def predictions(n: int, flagged: int) -> list[Prediction]:
    return [Prediction(f"{i}.png", "NORMAL", {"NORMAL": 0.9, "PNEUMONIA": 0.1}, 1.0, i >= flagged) for i in range(n)]


def test_drift_is_warned_once_and_shown_in_health(caplog):
    monitor = Monitor(["NORMAL", "PNEUMONIA"], 0.05, window=200)
    assert monitor.margin == pytest.approx(3 * (0.05 * 0.95 / 200) ** 0.5)  # 0.046
    with caplog.at_level(logging.WARNING, logger="medcls.serving.monitoring"):
        monitor.observe(predictions(199, 40))
        assert monitor.health()["status"] == "ok" and not caplog.records  # the window is not full yet
        monitor.observe(predictions(1, 0))  # 40 of 200 flagged: 20% against 5%
        assert monitor.health()["status"] == "drift" and monitor.health()["ood_flagged_rate"] == 0.2
        monitor.observe(predictions(10, 0))
        assert len(caplog.records) == 1 and "drift: 20.0% of the last 200 images" in caplog.text
        monitor.observe(predictions(200, 18))  # 9%: within 4.6 points of 5%
        assert monitor.health()["status"] == "ok" and "drift over" in caplog.records[-1].message
    assert len(caplog.records) == 2
    no_detector = Monitor(["A", "B"], None)
    no_detector.observe([Prediction("x", "A", {"A": 1.0, "B": 0.0})] * 300)
    assert no_detector.health()["status"] == "ok" and no_detector.health()["ood_flagged_rate"] is None
