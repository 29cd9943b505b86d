"""How well the out-of-distribution flag separates foreign images from the test
split: for each folder of foreign images, the fraction flagged and the AUROC of
the OOD score (test images negative, foreign images positive)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Protocol, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from medcls.data.images import Source, expand_paths

if TYPE_CHECKING:
    from medcls.ood.detector import OODDetector


class OODEvaluationError(ValueError):
    """Foreign folders were given but cannot be scored (no detector, no images)."""


class ScoresImages(Protocol):
    """What OOD evaluation needs of a model (a :class:`~medcls.inference.predictor.Predictor` is one)."""

    ood: OODDetector
    classes: list[str]

    def predict(self, sources: Iterable[Source]) -> tuple[list[dict], dict[str, str]]: ...


def separation(test_scores: np.ndarray, foreign_scores: np.ndarray, threshold: float) -> dict:
    """Fraction of ``foreign_scores`` flagged and their OOD AUROC against ``test_scores``."""
    y = np.r_[np.zeros(len(test_scores)), np.ones(len(foreign_scores))]
    return {"n": int(len(foreign_scores)), "flagged": float(np.mean(foreign_scores > threshold)),
            "auroc": float(roc_auc_score(y, np.r_[test_scores, foreign_scores]))}


def evaluate_ood(predictor: ScoresImages, test_scores: np.ndarray, folders: Sequence[str | Path] = (),
                 labels: np.ndarray | None = None, correct: np.ndarray | None = None) -> dict:
    """The OOD section of an evaluation: test images flagged (per class too, given their
    ``labels``; with ``correct``, whether each prediction was right, the accuracy of flagged and
    unflagged images: does the flag mark the answers to distrust?), and each foreign folder's
    separation."""
    detector = predictor.ood
    flagged = test_scores > detector.threshold
    test: dict = {"n": int(len(test_scores)), "flagged": float(np.mean(flagged))}
    if labels is not None:
        test["by_class"] = {name: {"n": int(np.sum(labels == k)), "flagged": float(np.mean(flagged[labels == k]))}
                            for k, name in enumerate(predictor.classes) if np.any(labels == k)}
    if correct is not None:
        test["accuracy"] = {"in_distribution": float(np.mean(correct[~flagged])) if np.any(~flagged) else None,
                            "flagged": float(np.mean(correct[flagged])) if np.any(flagged) else None}
    out = {"method": detector.method, "threshold": detector.threshold, "target_flag_rate": detector.flag_rate,
           "test": test, "foreign": {}}
    for folder in folders:
        files = expand_paths([folder])
        rows, errors = predictor.predict(files)
        if not rows:
            raise OODEvaluationError(f"no readable images in {folder}")
        scores = np.array([r.ood_score for r in rows])
        out["foreign"][str(folder)] = {**separation(test_scores, scores, detector.threshold),
                                       "unreadable": len(errors)}
    return out
