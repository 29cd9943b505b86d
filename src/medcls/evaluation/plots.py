"""PNG plots of a run: training curves, confusion matrix, ROC and PR curves,
reliability diagram."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from medcls.core.figures import save_png as _save
from medcls.core.figures import subplots


def read_epoch_log(csv_path: Path) -> dict[str, dict[int, float]]:
    """Lightning's CSV log -> ``{metric: {epoch: value}}`` (rows of one epoch merged)."""
    out: dict[str, dict[int, float]] = {}
    if not csv_path.is_file():
        return out
    with csv_path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            for key, value in row.items():
                if key not in ("epoch", "step") and value not in ("", None):
                    out.setdefault(key, {})[epoch] = float(value)
    return out


def plot_training_curves(log_csv: Path, path: Path) -> Path | None:
    """Train vs validation loss, accuracy and AUC per epoch."""
    log = read_epoch_log(log_csv)
    panels = [(m, t) for m, t in (("loss", "Loss"), ("acc", "Accuracy"), ("auc", "AUC"))
              if f"val_{m}" in log or f"train_{m}" in log]
    if not panels:
        return None
    fig, axes = subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (m, title) in zip(axes[0], panels):
        for split, style in (("train", "-o"), ("val", "-s")):
            series = log.get(f"{split}_{m}")
            if series:
                ax.plot(list(series), list(series.values()), style, label=split, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path) -> Path:
    """Counts and row-normalised confusion matrices side by side."""
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = 2.2 + 0.75 * len(classes)
    fig, axes = subplots(1, 2, figsize=(2 * size + 1, size))
    for ax, mat, title, fmt in ((axes[0], cm, "Counts", "{:d}"), (axes[1], norm, "Row-normalised", "{:.2f}")):
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, fmt.format(mat[i, j]), ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
    return _save(fig, path)


def _one_vs_rest(y: np.ndarray, probs: np.ndarray, classes: list[str]):
    if probs.shape[1] == 2:
        yield classes[1], (y == 1).astype(int), probs[:, 1]
    else:
        for k, c in enumerate(classes):
            if 0 < (y == k).sum() < len(y):
                yield c, (y == k).astype(int), probs[:, k]


def plot_roc(y: np.ndarray, probs: np.ndarray, classes: list[str], path: Path,
             operating_point: tuple[float, float] | None = None) -> Path:
    """ROC curve(s); for binary models the chosen operating point is marked."""
    fig, ax = subplots(figsize=(4.6, 4.2))
    for name, yt, score in _one_vs_rest(y, probs, classes):
        fpr, tpr, _ = skm.roc_curve(yt, score)
        ax.plot(fpr, tpr, label=f"{name} (AUC {skm.auc(fpr, tpr):.3f})")
    if operating_point is not None:
        ax.plot(1 - operating_point[1], operating_point[0], "k*", markersize=12, label="operating point")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_pr(y: np.ndarray, probs: np.ndarray, classes: list[str], path: Path) -> Path:
    fig, ax = subplots(figsize=(4.6, 4.2))
    for name, yt, score in _one_vs_rest(y, probs, classes):
        prec, rec, _ = skm.precision_recall_curve(yt, score)
        ax.plot(rec, prec, label=f"{name} (AP {skm.average_precision_score(yt, score):.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_reliability(y: np.ndarray, probs: np.ndarray, path: Path, bins: int = 10) -> Path:
    """Top-class confidence against observed accuracy."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0, 1, bins + 1)
    mids, accs, counts = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            mids.append(conf[m].mean())
            accs.append(correct[m].mean())
            counts.append(m.sum())
    fig, ax = subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    ax.plot(mids, accs, "-o", label="model")
    for x, a, c in zip(mids, accs, counts):
        ax.annotate(str(c), (x, a), fontsize=7, textcoords="offset points", xytext=(0, 5))
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram")
    ax.legend(fontsize=8)
    return _save(fig, path)
