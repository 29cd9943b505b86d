"""medcls: train, evaluate, explain and serve CNNs for medical image classification.

The public Python API mirrors the command line, one function per command
(:mod:`medcls.api`)::

    import medcls
    cfg = medcls.load_config("pneumonia-quick", ["train.epochs=2"])  # a shipped preset, by name
    run = medcls.train(cfg)
    metrics = medcls.evaluate(run)
    rows, errors = medcls.predict(["xray.jpeg"], model=run)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medcls.config import Config, load_config  # noqa: E402
from medcls.core.version import __version__  # noqa: E402

if TYPE_CHECKING:  # what editors and type checkers see; loaded on first use below
    from medcls.api import (
        adapt,
        audit,
        calibrate,
        compare,
        evaluate,
        explain,
        export,
        inspect,
        predict,
        recalibrate,
        report,
        resume,
        run,
        serve,
        stress,
        train,
    )
    from medcls.inference.predictor import Predictor


def __getattr__(name: str):
    # Heavy modules (torch, Lightning) load on first use, so `medcls --help` stays fast.
    import importlib

    if name in _API:
        return getattr(importlib.import_module("medcls.api"), name)
    if name == "Predictor":
        return importlib.import_module("medcls.inference.predictor").Predictor
    raise AttributeError(f"module 'medcls' has no attribute {name!r}")


__all__ = ["Config", "load_config", "Predictor", "__version__", "inspect", "audit", "train", "resume", "recalibrate",
           "refit_ood", "calibrate", "adapt", "evaluate", "stress", "predict", "explain", "report", "compare",
           "export", "serve", "run"]
_API = frozenset(__all__) - {"Config", "load_config", "Predictor", "__version__"}  # the functions of medcls.api
