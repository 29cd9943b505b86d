"""A saved run's model and the data it was trained on, split as its run froze it, and the
headline metrics of its task: what evaluation (the test split) and the stress test (the
validation split) share."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from medcls.config import config_from_dict
from medcls.data.fingerprint import split_fingerprint
from medcls.data.prepared import PreparedData, prepare_data
from medcls.data.split import split_digest
from medcls.inference.predictor import decide
from medcls.metrics.classification import binary_metrics, multiclass_metrics
from medcls.models.checkpoint import ModelInfo


class EvaluationError(ValueError):
    """Evaluation cannot be done honestly (e.g. the test split differs from the model's)."""


def referable_index(info: ModelInfo) -> int | None:
    """For ordinal grades, the first "referable" grade (from the data set definition)."""
    ref = info.referable_from
    return info.classes.index(ref) if ref in info.classes else None


def score(y: np.ndarray, probs: np.ndarray, info: ModelInfo) -> dict:
    """The headline metrics of ``probs`` against ``y`` for this model's task."""
    if info.binary:
        return binary_metrics(y, probs[:, 1], info.threshold)
    return multiclass_metrics(y, probs, info.ordinal, referable_index(info), decide(probs, info))


def resolve_checkpoint(target: str | Path) -> tuple[Path, Path]:
    """``RUN_DIR`` or ``CHECKPOINT`` -> (checkpoint path, run folder)."""
    target = Path(target)
    ckpt = target / "model.pt" if target.is_dir() else target
    return ckpt, ckpt.parent


def checkpoint_data(ckpt: Path, info: ModelInfo, data_root: str | Path | None = None,
                    quiet: bool = False) -> PreparedData:
    """The data a checkpoint was trained on, split as its run's ``manifest.csv`` froze it
    (if present), at the model's size and colour mode; refuses a test split whose files,
    labels or contents differ from those recorded in the checkpoint."""
    cfg = config_from_dict(info.config)
    data_cfg = dataclasses.replace(cfg.data, image_size=info.image_size, color_mode=info.color_mode)
    if data_root is not None:
        data_cfg.root = str(data_root)
    manifest = ckpt.parent / "manifest.csv"
    data = prepare_data(data_cfg, manifest if manifest.is_file() else None, quiet=quiet)
    digest = split_digest(data.index, data.splits, "test")
    if info.test_digest and digest != info.test_digest:
        raise EvaluationError(f"the test split found in {data.index.root} does not match the one recorded in {ckpt} "
                              f"(files or labels differ); refusing to report numbers on a different test set")
    if info.test_fingerprint and split_fingerprint(data.index, data.splits["test"]) != info.test_fingerprint:
        raise EvaluationError(f"the test images in {data.index.root} have the names and labels recorded in {ckpt} "
                              f"but different content (data fingerprint); refusing to report numbers on changed images")
    return data
