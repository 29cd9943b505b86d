"""The main job: inspect the data, train, evaluate on the test split, in one run folder."""

from __future__ import annotations

from pathlib import Path

from medcls.config import Config
from medcls.data.inspect import inspect_data
from medcls.evaluation.evaluate import evaluate
from medcls.training.train import new_run_dir, train
from medcls.validation import check_run_config


def run_pipeline(cfg: Config, quiet: bool = False) -> tuple[Path, dict]:
    """Inspect -> train -> evaluate on test -> saved model, plots and metrics; returns (run folder, metrics)."""
    check_run_config(cfg)  # before the run folder and the inspection exist
    run = new_run_dir(cfg)
    inspect_data(cfg.data.root, cfg.data.dataset, run / "inspection", quiet=quiet)
    train(cfg, run, quiet=quiet)
    return run, evaluate(run, quiet=quiet)
