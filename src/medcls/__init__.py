"""medcls: train, evaluate, explain and serve CNNs for medical image classification.

The public Python API mirrors the command line::

    from medcls import load_config, train, evaluate, Predictor
    cfg = load_config("configs/pneumonia-quick.yaml", ["train.epochs=2"])
    run = train(cfg)
    metrics = evaluate(run)
    rows, errors = Predictor.from_checkpoint(run / "model.pt").predict(["xray.jpeg"])
"""

__version__ = "0.1.0"

from medcls.config import Config, load_config  # noqa: E402


def __getattr__(name: str):
    # Heavy modules (torch, Lightning) load on first use, so `medcls --help` stays fast.
    import importlib

    lazy = {
        "train": ("medcls.training.train", "train"),
        "evaluate": ("medcls.evaluation.evaluate", "evaluate"),
        "Predictor": ("medcls.predict", "Predictor"),
        "inspect_data": ("medcls.data.inspect", "inspect_data"),
        "run_pipeline": ("medcls.pipeline", "run_pipeline"),
    }
    if name in lazy:
        module, attr = lazy[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'medcls' has no attribute {name!r}")


__all__ = ["Config", "load_config", "train", "evaluate", "Predictor", "inspect_data", "run_pipeline", "__version__"]
