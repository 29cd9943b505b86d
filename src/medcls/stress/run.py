"""The stress test of a saved run on its validation split: ``stress/stress.json``, a PNG per
perturbation under ``stress/`` and the run's ``shortcut_score.json``."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional

from medcls.config import config_from_dict
from medcls.core.io import atomic_write_json
from medcls.core.progress import task
from medcls.data.prepared import PreparedData
from medcls.inference.predictor import Predictor
from medcls.inference.saved_run import EvaluationError, checkpoint_data, resolve_checkpoint
from medcls.models.checkpoint import load_checkpoint
from medcls.stress.plots import plot_curve
from medcls.stress.replay import per_class_subset, replay, steps
from medcls.stress.result import StressResult

log = logging.getLogger(__name__)

SCORE_FILE = "shortcut_score.json"


def images_per_class(configured: Optional[int], given: Optional[int]) -> Optional[int]:
    """The stress test's limit: ``given`` (0: all images) or else the run's ``configured`` one."""
    return configured if given is None else given or None


def stress_split(predictor: Predictor, data: PreparedData, out: Path, limit_per_class: Optional[int] = None,
                 seed: int = 0, quiet: bool = False, split: str = "val") -> StressResult:
    """Replay ``split`` of ``data`` (at most ``limit_per_class`` images per class, seeded) under
    every perturbation; writes ``out/stress/stress.json``, ``out/stress/<perturbation>.png`` and
    ``out/shortcut_score.json``."""
    if limit_per_class is not None and limit_per_class < 1:
        raise EvaluationError(f"stress test: images per class must be at least 1 (or 0 for all), got {limit_per_class}")
    labels = data.labels[split]
    rows = per_class_subset(labels, limit_per_class, seed)
    images = data.images(split)[rows]
    log.info("stress test: %d %s images under %d perturbed settings", len(rows), split, steps())
    with task(f"stress test: {len(rows)} {split} images under {steps()} perturbed settings", steps(),
              not quiet) as advance:
        result = replay(predictor, images, labels[rows], split, seed=seed, limit_per_class=limit_per_class,
                        on_step=lambda name, strength: advance())
    folder = out / "stress"
    folder.mkdir(parents=True, exist_ok=True)
    for curve in result.curves:
        plot_curve(curve, folder / f"{curve.name}.png")
    atomic_write_json(folder / "stress.json", result.to_dict())
    atomic_write_json(out / SCORE_FILE, {"split": split, "n_images": result.n_images,
                                         **dataclasses.asdict(result.score)})
    return result


def stress_run(target: str | Path, data_root: str | Path | None = None, out_dir: str | Path | None = None,
               limit_per_class: Optional[int] = None, seed: int = 0, quiet: bool = False) -> StressResult:
    """Stress-test the model in ``target`` (run folder or checkpoint) on its validation split,
    as :func:`stress_split` writes it into ``out_dir`` (default: the run folder);
    ``limit_per_class``: images per class (None: the run's ``eval.stress_limit``; 0: all)."""
    ckpt, run = resolve_checkpoint(target)
    net, info = load_checkpoint(ckpt)
    cfg = config_from_dict(info.config)
    data = checkpoint_data(ckpt, info, data_root, quiet)
    return stress_split(Predictor(net, info, cfg.data.batch_size), data, Path(out_dir) if out_dir else run,
                        images_per_class(cfg.eval.stress_limit, limit_per_class), seed, quiet)
