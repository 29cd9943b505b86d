"""Evaluation of a saved model on its frozen test split: metrics with bootstrap
confidence intervals, calibration, predictions table and plots, in one folder."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix

from medcls.config import config_from_dict
from medcls.core.io import atomic_write_json
from medcls.evaluation import plots
from medcls.evaluation.result import CalibrationSummary, EvaluationResult
from medcls.inference.predictor import (
    Predictor,
    decide,
    prediction_rows,
    write_predictions,
)
from medcls.inference.saved_run import EvaluationError, checkpoint_data, resolve_checkpoint, score
from medcls.metrics.calibration import expected_calibration_error, nll
from medcls.metrics.classification import bootstrap_ci, per_class_table
from medcls.models.checkpoint import load_checkpoint
from medcls.models.inference import logits_to_probs
from medcls.ood.evaluation import evaluate_ood
from medcls.stress.run import images_per_class, stress_split

log = logging.getLogger(__name__)


def evaluate_model(target: str | Path, data_root: str | Path | None = None, out_dir: str | Path | None = None,
                   bootstrap: int | None = None, quiet: bool = False, ood: Sequence[str | Path] = (),
                   stress: bool | None = None, stress_limit: int | None = None) -> EvaluationResult:
    """Evaluate the model in ``target`` (run folder or checkpoint) on its test split.

    Writes ``metrics.json``, ``predictions.csv`` and PNG plots into ``out_dir`` (default:
    the run folder) and returns the result (:func:`medcls.api.evaluate` adds the report). ``ood``: folders
    of foreign images, reported with the fraction flagged out-of-distribution and the
    OOD AUROC against the test split. ``stress``: also replay the validation split under the
    perturbations of :mod:`medcls.stress` (``stress_limit`` images per class; None for either:
    the run's ``eval.stress`` / ``eval.stress_limit``; 0: all). ``quiet``: no progress bars.
    """
    ckpt, run = resolve_checkpoint(target)
    net, info = load_checkpoint(ckpt)
    if ood and info.ood is None:
        raise EvaluationError(f"{ckpt} has no out-of-distribution detector (trained before medcls had one); "
                              f"retrain it to use --ood")
    missing = [str(f) for f in ood if not Path(f).is_dir()]
    if missing:
        raise EvaluationError(f"out-of-distribution folder(s) not found: {', '.join(missing)}")
    cfg = config_from_dict(info.config)
    data = checkpoint_data(ckpt, info, data_root, quiet)
    out = Path(out_dir) if out_dir else run
    out.mkdir(parents=True, exist_ok=True)

    y = data.labels["test"]
    predictor = Predictor(net, info, cfg.data.batch_size)
    log.info("scoring %d test images", len(y))
    logits, ood_scores = predictor.outputs(data.images("test"))
    probs = logits_to_probs(logits, info.temperature)
    pred = decide(probs, info)
    metrics = score(y, probs, info)
    draws = cfg.eval.bootstrap if bootstrap is None else bootstrap
    ci = bootstrap_ci(lambda i: score(y[i], probs[i], info), len(y), draws) if draws else {}
    raw = logits_to_probs(logits, 1.0)
    result = EvaluationResult(
        n_test=int(len(y)), classes=info.classes, metrics=metrics, ci95=ci, bootstrap_draws=draws,
        threshold=info.threshold if info.binary else None, threshold_rule=info.threshold_rule,
        confusion_matrix=confusion_matrix(y, pred, labels=range(len(info.classes))).tolist(),
        per_class=per_class_table(y, pred, info.classes),
        calibration=CalibrationSummary(
            temperature=info.temperature, ece=expected_calibration_error(y, probs),
            ece_uncalibrated=expected_calibration_error(y, raw), nll=nll(logits, y, info.temperature),
            nll_uncalibrated=nll(logits, y, 1.0)),
        unreadable=data.cache.errors, checkpoint=str(ckpt),
        ood=evaluate_ood(predictor, ood_scores, ood, y, pred == y) if ood_scores is not None else None,
    )
    predictions = prediction_rows([str(p) for p in data.paths("test")], probs, info, ood_scores)
    write_predictions(predictions, out / "predictions.csv", [info.classes[t] for t in y])
    plots.plot_confusion(np.array(result.confusion_matrix), info.classes, out / "confusion_matrix.png")
    op = (metrics["recall"], metrics["specificity"]) if info.binary else None
    plots.plot_roc(y, probs, info.classes, out / "roc.png", op)
    plots.plot_pr(y, probs, info.classes, out / "pr.png")
    plots.plot_reliability(y, probs, out / "reliability.png")
    plots.plot_training_curves(run / "metrics.csv", out / "training_curves.png")
    if cfg.eval.stress if stress is None else stress:
        limit = images_per_class(cfg.eval.stress_limit, stress_limit)
        result = dataclasses.replace(result, stress=stress_split(predictor, data, out, limit, quiet=quiet))
    atomic_write_json(out / "metrics.json", result.to_dict())
    return result
