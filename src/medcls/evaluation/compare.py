"""Runs side by side: architecture, recipe, size, cost and test metrics."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

# val_auc (the best epoch's validation AUC) and the shortcut score on stressed validation
# (stress_auc: worst AUC under the perturbations, zoom_flip: first class flipped by a 70% crop;
# medcls.stress.score) are what model choice may look at; the rest is test.
COLUMNS = ["run", "arch", "size", "params_m", "epochs", "device", "fit_min", "img_per_s", "val_auc", "stress_auc",
           "zoom_flip", "accuracy",
           "recall", "specificity", "f1", "roc_auc", "qwk", "macro_f1", "ece"]


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def run_row(run: str | Path) -> dict:
    """One row of facts about a run folder (missing facts are left empty)."""
    run = Path(run)
    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    training, metrics = _read(run / "training.json"), _read(run / "metrics.json")
    shortcut = _read(run / "shortcut_score.json")
    m = metrics.get("metrics", {})
    row = {
        "run": run.name, "arch": cfg.get("model", {}).get("arch"), "size": cfg.get("data", {}).get("image_size"),
        "params_m": round(training["parameters"] / 1e6, 2) if "parameters" in training else None,
        "epochs": training.get("epochs_run"),
        "fit_min": round(training["fit_seconds"] / 60, 3) if "fit_seconds" in training else None,
        "img_per_s": training.get("mean_images_per_s"), "device": training.get("device"),
        "val_auc": training.get("best_epoch_score") if training.get("monitor") == "val_auc" else None,
        "stress_auc": shortcut.get("worst_auc"), "zoom_flip": shortcut.get("zoom_flip"),
        "ece": metrics.get("calibration", {}).get("ece"),
    }
    row.update({k: m.get(k) for k in COLUMNS if k in m})
    return {k: row.get(k) for k in COLUMNS}


def compare_runs(runs: list[str | Path]) -> list[dict]:
    """Rows for :func:`run_row` of each run folder, in the order given."""
    return [run_row(r) for r in runs]


def column_label(column: str) -> str:
    """A column's header for people: ``fit_min`` holds minutes but is shown in its best unit."""
    return "fit time" if column == "fit_min" else column


def duration(seconds: float) -> str:
    """A wall time in the unit that reads best: seconds under a minute, minutes under an hour, else hours."""
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def format_value(v, column: str | None = None) -> str:
    """Rates and scores to 4 decimals; the fit time (``fit_min``) in its best unit; counts and names as they are."""
    if v is None:
        return ""
    if column == "fit_min":
        return duration(v * 60)
    return f"{v:.4f}" if isinstance(v, float) and v < 1.5 else str(v)


def markdown_table(rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    lines = ["| " + " | ".join(column_label(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(format_value(r.get(c), c) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"
