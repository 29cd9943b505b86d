"""``medcls calibrate``: the decision threshold and temperature refitted on a small labelled
sample of a new site. An operating point chosen on the training site's validation split does
not transfer (the shipped model: specificity 0.99 on validation, 0.76 on the Kermany test
folder); the site's own labelled images say where it should be. The weights are not touched."""

from __future__ import annotations

import dataclasses
import datetime
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from medcls.config import config_from_dict
from medcls.core.version import __version__
from medcls.evaluation.evaluate import resolve_checkpoint, score
from medcls.inference.predictor import Predictor
from medcls.metrics.classification import binary_metrics, bootstrap_ci
from medcls.metrics.threshold import choose_threshold
from medcls.models.checkpoint import ModelInfo, SiteCalibration, SiteState, load_checkpoint, save_checkpoint
from medcls.models.inference import logits_to_probs
from medcls.site.sample import SiteImages, check_class_counts, labelled_sample
from medcls.training.calibrate import fit_decision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteCalibrationResult:
    """What ``medcls calibrate`` fitted and what it measured on the site's sample."""

    record: SiteCalibration  # as stored in the new model (``ModelInfo.site.calibration``)
    n_images: int
    before: dict[str, float]  # metrics on the sample with the model's own threshold and temperature
    after: dict[str, float]  # with the refitted ones (fitted on these images: optimistic)
    ci95_after: dict[str, list[float]]  # percentile bootstrap over the sample's images
    out_of_bag: dict[str, float]  # mean over draws: refit on a resample, scored on the images it left out
    ci95_out_of_bag: dict[str, list[float]]
    threshold_ci95: Optional[list[float]]  # the refitted threshold over the same resamples (binary)
    bootstrap_draws: int
    out: Optional[Path]


def site_decision(logits: np.ndarray, labels: np.ndarray, info: ModelInfo, threshold_rule: Optional[str] = None,
                  target_sensitivity: Optional[float] = None, ordinal_decision: Optional[str] = None
                  ) -> tuple[ModelInfo, str]:
    """``info`` with the temperature and threshold (or ordinal cut-points) refitted on ``logits`` /
    ``labels`` (the model's own rules unless the arguments say otherwise), and the reason."""
    cfg = config_from_dict(info.config)
    rules = cfg.eval
    if threshold_rule is not None:
        rules.threshold_rule = threshold_rule
    if target_sensitivity is not None:
        rules.target_sensitivity = target_sensitivity
    if ordinal_decision is not None:
        rules.ordinal_decision = ordinal_decision
    d = fit_decision(logits, labels, rules, info.ordinal, on="the site's sample")
    # The rules used are recorded in the model's config, as medcls recalibrate records them.
    return dataclasses.replace(info, temperature=d.temperature, threshold=d.threshold, threshold_rule=d.rule,
                               cutpoints=d.cutpoints, config=cfg.to_dict()), d.reason


def refit_bootstrap(probs: np.ndarray, labels: np.ndarray, fitted: ModelInfo, draws: int, seed: int = 0
                    ) -> tuple[dict[str, list[float]], list[float]]:
    """Over ``draws`` resamples: refit the threshold on the resample (by ``fitted``'s rule, on its
    calibrated p(positive) ``probs``), score the images it left out. Returns ``({metric: values},
    thresholds)``: how well, and how stably, the procedure works on a sample of this size. The
    temperature is not refitted per draw: a rule picks the same images at any temperature (it
    only ranks them), so the decisions, and every figure, are those of a full refit."""
    rules = config_from_dict(fitted.config).eval
    rng = np.random.default_rng(seed)
    n = len(labels)
    scores: dict[str, list[float]] = {}
    thresholds: list[float] = []
    for _ in range(draws):
        idx = rng.integers(0, n, n)
        left = np.setdiff1d(np.arange(n), idx)
        if len(np.unique(labels[idx])) < 2 or len(np.unique(labels[left])) < 2:
            continue
        threshold, _ = choose_threshold(labels[idx], probs[idx], fitted.threshold_rule, rules.target_sensitivity,
                                        rules.fixed_threshold)
        thresholds.append(threshold)
        for key, value in binary_metrics(labels[left], probs[left], threshold).items():
            scores.setdefault(key, []).append(float(value))
    return scores, thresholds


def _interval(values: list[float]) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def calibrate_site(model: str | Path, data: str | Path, out: str | Path | None = None,
                   threshold_rule: Optional[str] = None, target_sensitivity: Optional[float] = None,
                   bootstrap: int = 1000, quiet: bool = False, ordinal_decision: Optional[str] = None
                   ) -> SiteCalibrationResult:
    """Refit ``model``'s temperature and threshold on the labelled site sample ``data`` (class folders)
    and write the result to ``out`` (default: ``<model name>-site.pt`` in the current folder), its
    provenance in ``ModelInfo.site.calibration``. Refuses fewer than
    :data:`~medcls.site.sample.MIN_PER_CLASS` images of a class."""
    ckpt = resolve_checkpoint(model)[0]
    net, info = load_checkpoint(ckpt)
    sample = labelled_sample(data, info, quiet)
    counts = sample.counts(info.classes)
    check_class_counts(counts)
    y = sample.labels
    logits = Predictor(net, info, config_from_dict(info.config).data.batch_size).logits(sample.images)
    fitted, why = site_decision(logits, y, info, threshold_rule, target_sensitivity, ordinal_decision)
    result = summarise(sample, counts, logits, info, fitted, why, bootstrap)
    fitted = dataclasses.replace(fitted, site=dataclasses.replace(info.site or SiteState(), calibration=result.record))
    out = Path(out) if out is not None else Path(f"{ckpt.stem}-site.pt")
    save_checkpoint(out, net, fitted)
    log.info("site calibration on %d images of %s: %s; temperature %.3f -> %.3f; written to %s", len(y), data, why,
             info.temperature, fitted.temperature, out)
    return dataclasses.replace(result, out=out)


def summarise(sample: SiteImages, counts: dict[str, int], logits: np.ndarray, info: ModelInfo, fitted: ModelInfo,
              why: str, draws: int) -> SiteCalibrationResult:
    """The before/after figures and intervals of a fit, and its provenance record."""
    y = sample.labels
    record = SiteCalibration(
        data=str(sample.root), data_sha256=sample.sha256, counts=counts, threshold_rule=fitted.threshold_rule,
        threshold_reason=why, threshold_before=info.threshold, threshold=fitted.threshold,
        temperature_before=info.temperature, temperature=fitted.temperature,
        fitted_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        medcls_version=__version__)
    after_probs = logits_to_probs(logits, fitted.temperature)
    oob, thresholds = refit_bootstrap(after_probs[:, 1], y, fitted, draws) if draws and info.binary else ({}, [])
    return SiteCalibrationResult(
        record=record, n_images=int(len(y)), before=score(y, logits_to_probs(logits, info.temperature), info),
        after=score(y, after_probs, fitted),
        ci95_after=bootstrap_ci(lambda i: score(y[i], after_probs[i], fitted), len(y), draws) if draws else {},
        out_of_bag={k: float(np.mean(v)) for k, v in oob.items()},
        ci95_out_of_bag={k: _interval(v) for k, v in oob.items()},
        threshold_ci95=_interval(thresholds) if thresholds else None,
        bootstrap_draws=draws, out=None)
