"""The stress test: a split's images replayed under every perturbation at every strength,
scored with the model's calibrated probabilities and stored operating point."""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import numpy as np

from medcls.inference.predictor import Predictor, decide
from medcls.inference.saved_run import score
from medcls.models.inference import logits_to_probs
from medcls.stress.perturbations import Perturbation, all_perturbations
from medcls.stress.result import StressCurve, StressPoint, StressResult
from medcls.stress.score import shortcut_score

log = logging.getLogger(__name__)


def per_class_subset(labels: np.ndarray, limit: Optional[int], seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``limit`` images per class, drawn with ``seed`` (None: all)."""
    if limit is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == k))[:limit] for k in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def point(strength: float, y: np.ndarray, probs: np.ndarray, clean: np.ndarray, predictor: Predictor) -> StressPoint:
    """The metrics of ``probs`` against ``y``; flips counted from the unperturbed decisions ``clean``."""
    info = predictor.info
    pred = decide(probs, info)
    metrics = score(y, probs, info)
    flip = {}
    for k, name in enumerate(info.classes):
        right = (y == k) & (clean == k)
        if right.any():
            flip[name] = float((pred[right] != k).mean())
    return StressPoint(strength=float(strength), auc=float(metrics["roc_auc" if info.binary else "ovr_auc"]),
                       accuracy=float(metrics["accuracy"]), flip=flip)


def replay(predictor: Predictor, images: np.ndarray, labels: np.ndarray, split: str = "val",
           perturbations: Optional[Sequence[Perturbation]] = None, seed: int = 0,
           limit_per_class: Optional[int] = None,
           on_step: Callable[[str, float], None] | None = None) -> StressResult:
    """Replay uint8 ``images`` (with ``labels``) under each perturbation (default: all
    registered) at each of its strengths; random perturbations are drawn from ``seed``.
    ``on_step(name, strength)`` is called after each replay (progress)."""
    perturbations = list(perturbations or all_perturbations())
    info = predictor.info

    def probabilities(x: np.ndarray) -> np.ndarray:
        return logits_to_probs(predictor.logits(x), info.temperature)

    clean_probs = probabilities(images)
    clean = decide(clean_probs, info)
    baseline = point(0.0, labels, clean_probs, clean, predictor)
    curves = []
    for p in perturbations:
        points = []
        for strength in p.strengths:
            if strength == 0:
                points.append(baseline)
                continue
            points.append(point(strength, labels, probabilities(p(images, strength, seed)), clean, predictor))
            if on_step:
                on_step(p.name, strength)
        curves.append(StressCurve(p.name, p.unit, points))
        log.debug("stress %s: AUC %s", p.name, [round(q.auc, 4) for q in points])
    return StressResult(
        split=split, n_images=int(len(labels)),
        per_class={c: int((labels == k).sum()) for k, c in enumerate(info.classes)},
        limit_per_class=limit_per_class, seed=seed, classes=list(info.classes),
        threshold=info.threshold if info.binary else None, tta=bool(info.tta), curves=curves,
        score=shortcut_score(curves, info.classes))


def steps(perturbations: Optional[Sequence[Perturbation]] = None) -> int:
    """Replays a stress test runs (perturbed points; the unperturbed one is shared)."""
    return sum(sum(1 for s in p.strengths if s != 0) for p in (perturbations or all_perturbations()))
