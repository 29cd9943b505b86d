"""Classification metrics (scikit-learn underneath) for binary and multi-class models,
and bootstrap confidence intervals over test images."""

from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn import metrics as skm

from medcls.core.progress import PROGRESS_MIN_ITEMS, track

# What people call the metrics (tables and reports); the keys stay the stable machine names.
METRIC_NAMES = {
    "accuracy": "Accuracy", "precision": "Precision (PPV)", "recall": "Sensitivity (recall)",
    "specificity": "Specificity", "f1": "F1 score", "roc_auc": "ROC AUC", "pr_auc": "PR AUC (average precision)",
    "balanced_accuracy": "Balanced accuracy", "macro_f1": "F1 score, mean over classes",
    "weighted_f1": "F1 score, weighted by class size", "ovr_auc": "ROC AUC, one class vs the rest (mean)",
    "qwk": "Quadratic weighted kappa", "referable_sensitivity": "Sensitivity for referable disease",
    "referable_specificity": "Specificity for referable disease", "referable_auc": "ROC AUC for referable disease",
}


def metric_name(key: str) -> str:
    """The plain name of metric ``key`` (the key itself where none is set)."""
    return METRIC_NAMES.get(key, key)


def binary_metrics(y: np.ndarray, p_pos: np.ndarray, threshold: float) -> dict:
    """Accuracy, precision, recall (sensitivity), specificity, F1, ROC AUC, PR AUC at ``threshold``."""
    pred = (p_pos >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    two = len(np.unique(y)) == 2
    return {
        "accuracy": (tp + tn) / len(y),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "specificity": tn / (tn + fp) if tn + fp else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "roc_auc": skm.roc_auc_score(y, p_pos) if two else float("nan"),
        "pr_auc": skm.average_precision_score(y, p_pos) if two else float("nan"),
    }


def multiclass_metrics(y: np.ndarray, probs: np.ndarray, ordinal: bool = False,
                       referable_from: int | None = None, pred: np.ndarray | None = None) -> dict:
    """Accuracy, balanced accuracy, macro/weighted F1, one-vs-rest AUC; for ordinal
    grades quadratic weighted kappa; with ``referable_from`` the binary view
    "grade >= referable_from" (sensitivity, specificity, AUC). ``pred``: the model's decisions
    (e.g. ordinal cut-points), argmax of ``probs`` if not given."""
    k = probs.shape[1]
    pred = probs.argmax(axis=1) if pred is None else pred
    out = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "macro_f1": skm.f1_score(y, pred, average="macro", labels=range(k), zero_division=0),
        "weighted_f1": skm.f1_score(y, pred, average="weighted", labels=range(k), zero_division=0),
    }
    present = np.unique(y)
    out["ovr_auc"] = (skm.roc_auc_score(y, probs, multi_class="ovr", labels=range(k))
                      if len(present) == k else float("nan"))
    if ordinal:
        out["qwk"] = skm.cohen_kappa_score(y, pred, weights="quadratic", labels=range(k))
    if referable_from is not None:
        y_ref = (y >= referable_from).astype(int)
        p_ref = probs[:, referable_from:].sum(axis=1)
        ref = binary_metrics(y_ref, p_ref, 0.5)
        pred_ref = (pred >= referable_from).astype(int)  # the graded decision, not a second threshold
        tn, fp, fn, tp = skm.confusion_matrix(y_ref, pred_ref, labels=[0, 1]).ravel()
        out["referable_sensitivity"] = tp / (tp + fn) if tp + fn else 0.0
        out["referable_specificity"] = tn / (tn + fp) if tn + fp else 0.0
        out["referable_auc"] = ref["roc_auc"]
    return out


def per_class_table(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> list[dict]:
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=range(len(classes)), zero_division=0)
    return [{"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)]


def bootstrap_ci(fn: Callable[[np.ndarray], dict], n: int, draws: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap: ``fn(indices)`` -> metrics dict, over ``draws`` resamples of ``n`` items.
    Returns ``{metric: [low, high]}`` for every finite scalar metric."""
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in track(range(draws), f"bootstrap confidence intervals ({draws} draws)", draws, draws >= PROGRESS_MIN_ITEMS):
        for key, value in fn(rng.integers(0, n, n)).items():
            if isinstance(value, (int, float, np.floating)) and np.isfinite(value):
                samples.setdefault(key, []).append(float(value))
    alpha = (1 - level) / 2 * 100
    return {k: [float(np.percentile(v, alpha)), float(np.percentile(v, 100 - alpha))] for k, v in samples.items()}
