"""The second half of training: fit what turns a network's logits into decisions — the
temperature, the binary threshold and the out-of-distribution detector — on the run's own
validation split. Re-runnable on a finished run without retraining (e.g. with a new
threshold rule)."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from medcls.config import Config, EvalConfig, config_from_dict
from medcls.core.io import atomic_write_json
from medcls.data.prepared import PreparedData, prepare_data
from medcls.inference.saved_run import checkpoint_data, resolve_checkpoint
from medcls.metrics.calibration import fit_temperature
from medcls.metrics.ordinal import fit_cutpoints
from medcls.metrics.threshold import choose_threshold
from medcls.models.checkpoint import ModelInfo, OODState, load_checkpoint, save_checkpoint
from medcls.models.inference import batch_logits, logits_to_probs
from medcls.ood.detector import METHODS, fit_ood
from medcls.stress.operating import describe, stressed_logits

log = logging.getLogger(__name__)


class CalibrationError(ValueError):
    """A run cannot be calibrated (no model, no validation split)."""


@dataclass(frozen=True)
class Calibration:
    """What was fitted on validation, and why."""

    temperature: float
    threshold: float  # binary: positive when p(positive) >= threshold; 0.5 for argmax models
    threshold_rule: str
    threshold_reason: str
    ood: Optional[OODState]
    n_val: int
    cutpoints: Optional[list[float]] = None  # ordinal grades decided by cut-points (eval.ordinal_decision)

    def apply(self, info: ModelInfo) -> ModelInfo:
        """``info`` with this calibration's temperature, decision rule and detector."""
        return dataclasses.replace(info, temperature=self.temperature, threshold=self.threshold,
                                   threshold_rule=self.threshold_rule, ood=self.ood, cutpoints=self.cutpoints)


@dataclass(frozen=True)
class Decision:
    """How logits become decisions: the temperature, then the binary threshold or the ordinal cut-points."""

    temperature: float
    threshold: float  # binary: positive when p(positive) >= threshold; 0.5 otherwise
    rule: str  # the threshold rule, "argmax" or "cutpoints"
    reason: str
    cutpoints: Optional[list[float]] = None


def fit_decision(logits: np.ndarray, labels: np.ndarray, rules: EvalConfig, ordinal: bool = False,
                 on: str = "validation") -> Decision:
    """The :class:`Decision` fitted on ``logits`` and their ``labels``: the temperature if
    ``rules.calibrate``, then for two classes the threshold on the calibrated p(positive) by
    ``rules.threshold_rule``, for ``ordinal`` grades with ``rules.ordinal_decision=cutpoints`` the
    cut-points; otherwise argmax. ``on`` names the data in the reason."""
    temperature = fit_temperature(logits, labels) if rules.calibrate else 1.0
    probs = logits_to_probs(logits, temperature)
    if probs.shape[1] == 2:
        threshold, why = choose_threshold(labels, probs[:, 1], rules.threshold_rule, rules.target_sensitivity,
                                          rules.fixed_threshold, on)
        return Decision(temperature, threshold, rules.threshold_rule, why)
    if ordinal and rules.ordinal_decision == "cutpoints":
        cutpoints, why = fit_cutpoints(labels, probs)
        return Decision(temperature, 0.5, "cutpoints", why, cutpoints)
    return Decision(temperature, 0.5, "argmax", "argmax of class probabilities")


def fit_detector(net: torch.nn.Module, cfg: Config, data: PreparedData, flag_rate: float, tta: bool) -> OODState:
    """The OOD detector of ``net`` by ``cfg.eval.ood_method``, fitted on ``data``'s training images
    (with augmented copies if ``eval.ood_augmented``), its threshold flagging ``flag_rate`` of validation."""
    return fit_ood(net, data.images("train"), data.labels["train"], data.images("val"), flag_rate,
                   cfg.eval.ood_method, cfg.data.batch_size, tta,
                   cfg.augment if cfg.eval.ood_augmented else None).to_state()


def fit_calibration(net: torch.nn.Module, cfg: Config, data: PreparedData) -> Calibration:
    """Fit temperature (if ``eval.calibrate``), threshold (binary, by ``eval.threshold_rule``) and
    the OOD detector of ``net`` on ``data``'s validation split (the decision with its stressed
    copies too when ``eval.threshold_on=stressed``); ``net`` is left unchanged."""
    val_labels = data.labels["val"]
    if not len(val_labels):
        return Calibration(1.0, 0.5, "argmax", "no validation split: defaults", None, 0)
    images = data.images("val")

    def logits_of(x: np.ndarray) -> np.ndarray:
        return batch_logits(net, x, cfg.data.batch_size, tta=cfg.eval.tta)

    val_logits = logits_of(images)
    if cfg.eval.threshold_on == "stressed":
        pooled_logits, pooled_labels = stressed_logits(logits_of, images, val_labels, val_logits)
        decision = fit_decision(pooled_logits, pooled_labels, cfg.eval, data.index.ordinal,
                                on=f"validation and its copies under {describe()}")
    else:
        decision = fit_decision(val_logits, val_labels, cfg.eval, data.index.ordinal)
    ood = fit_detector(net, cfg, data, cfg.eval.ood_flag_rate, cfg.eval.tta)
    return Calibration(decision.temperature, decision.threshold, decision.rule, decision.reason, ood,
                       int(len(val_labels)), decision.cutpoints)


def calibrate_run(run: str | Path, data_root: str | Path | None = None, threshold_rule: str | None = None,
                  target_sensitivity: float | None = None, quiet: bool = False,
                  ordinal_decision: str | None = None, threshold_on: str | None = None,
                  tta: bool | None = None) -> Calibration:
    """Refit the calibration of the finished run ``run`` on its frozen validation split (its
    ``manifest.csv``) and rewrite its ``model.pt``; the weights are not touched. ``threshold_rule``
    / ``target_sensitivity`` / ``ordinal_decision`` / ``threshold_on`` / ``tta`` replace the run's
    ``eval`` settings (recorded in the checkpoint's config; ``tta`` also switches the model's
    test-time augmentation, its decisions then fitted on the augmented logits)."""
    run = Path(run)
    ckpt, manifest = run / "model.pt", run / "manifest.csv"
    if not ckpt.is_file() or not manifest.is_file():
        raise CalibrationError(f"{run} is not a finished run folder (needs model.pt and manifest.csv)")
    net, info = load_checkpoint(ckpt)
    cfg = config_from_dict(info.config)
    overrides = dict(threshold_rule=threshold_rule, target_sensitivity=target_sensitivity,
                     ordinal_decision=ordinal_decision, threshold_on=threshold_on, tta=tta)
    cfg.eval = dataclasses.replace(cfg.eval, **{k: v for k, v in overrides.items() if v is not None})
    data_cfg = dataclasses.replace(cfg.data, image_size=info.image_size, color_mode=info.color_mode)
    if data_root is not None:
        data_cfg.root = str(data_root)
    data = prepare_data(data_cfg, manifest, quiet=quiet)
    if not len(data.labels["val"]):
        raise CalibrationError(f"{run} has no validation split to calibrate on")
    calibration = fit_calibration(net, cfg, data)
    save_checkpoint(ckpt, net, dataclasses.replace(calibration.apply(info), config=cfg.to_dict(), tta=cfg.eval.tta))
    record_calibration(run, calibration)
    log.info("calibrated %s on %d validation images: %s; temperature %.3f", run, calibration.n_val,
             calibration.threshold_reason, calibration.temperature)
    return calibration


def refit_ood(model: str | Path, method: str | None = None, data_root: str | Path | None = None,
              out: str | Path | None = None, quiet: bool = False) -> OODState:
    """Refit only the out-of-distribution detector of a saved model (checkpoint or run folder) by
    ``method`` (default: its ``eval.ood_method``) on the training and validation images it was
    trained on (its run's frozen split, or the one its config makes; the test split is checked
    against the recorded one, never used), flagging the model's share of validation; writes
    ``out`` (default: the model file itself). Weights, threshold and temperature are not touched,
    so a re-shipped network gets its detector by this one call."""
    ckpt = resolve_checkpoint(model)[0]
    net, info = load_checkpoint(ckpt)
    if info.site is not None and info.site.adaptation is not None:
        raise CalibrationError(f"{ckpt} was adapted to a site (medcls adapt): its features no longer match its "
                               f"training images; refit the detector on the model before adapting")
    cfg = config_from_dict(info.config)
    cfg.eval.ood_method = method or cfg.eval.ood_method
    if cfg.eval.ood_method not in METHODS:  # before the images are read
        raise CalibrationError(f"unknown OOD method {cfg.eval.ood_method!r} (known: {', '.join(METHODS)})")
    flag_rate = info.ood.flag_rate if info.ood is not None else cfg.eval.ood_flag_rate
    data = checkpoint_data(ckpt, info, data_root, quiet=quiet)
    if not len(data.labels["val"]):
        raise CalibrationError(f"{ckpt}: no validation split to set the OOD threshold on")
    ood = fit_detector(net, cfg, data, flag_rate, info.tta)
    save_checkpoint(out if out is not None else ckpt, net, dataclasses.replace(info, ood=ood, config=cfg.to_dict()))
    log.info("OOD detector of %s refitted (%s) on %d training and %d validation images: threshold %.4f flags %.0f%% "
             "of validation", ckpt, ood.method, len(data.labels["train"]), len(data.labels["val"]), ood.threshold,
             100 * flag_rate)
    return ood


def record_calibration(run: Path, calibration: Calibration) -> None:
    """Write the calibration's figures into the run's ``training.json`` (kept in step with ``model.pt``)."""
    path = run / "training.json"
    facts = json.loads(path.read_text()) if path.is_file() else {}
    facts.update(temperature=calibration.temperature, threshold=calibration.threshold,
                 threshold_reason=calibration.threshold_reason, cutpoints=calibration.cutpoints)
    atomic_write_json(path, facts)
