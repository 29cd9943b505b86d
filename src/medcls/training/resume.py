"""Resuming an interrupted training run (``medcls train --resume RUN``) so that it ends
exactly where an uninterrupted one would (see :mod:`medcls.training.checkpointing`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from medcls.config import load_config
from medcls.data.datasets import DataError, load_index
from medcls.data.fingerprint import data_fingerprint
from medcls.data.split import read_manifest
from medcls.models.checkpoint import CheckpointError
from medcls.training.checkpointing import LAST, read_training_checkpoint, save_training_checkpoint
from medcls.training.train import train


def _relocate(path: Path, ckpt: dict[str, Any], run: Path) -> None:
    """If the run folder was moved, point the checkpoint's best/last records at its new place:
    Lightning otherwise drops them, forgetting which epoch was best so far."""
    new = os.path.realpath(run / "checkpoints")
    moved = False
    for key, state in ckpt.get("callbacks", {}).items():
        old = state.get("dirpath") if key.startswith("ModelCheckpoint") else None
        if old is None or old == new:
            continue

        def fix(value: Any) -> Any:
            return new + value[len(old):] if isinstance(value, str) and value.startswith(old + os.sep) else value

        state.update({k: fix(v) for k, v in state.items() if k != "best_k_models"}, dirpath=new)
        state["best_k_models"] = {fix(k): v for k, v in state.get("best_k_models", {}).items()}
        moved = True
    if moved:
        save_training_checkpoint(ckpt, path)


def resume(run: str | Path, data_root: str | Path | None = None, quiet: bool = False) -> Path:
    """Continue the interrupted training run in ``run`` from ``checkpoints/last.ckpt`` with the
    run's own ``config.yaml`` and split manifest; returns the run folder.

    ``data_root`` points to the data if it moved; its contents must match the fingerprint the
    run recorded, or :class:`DataError` is raised."""
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise CheckpointError(f"{run} is not a medcls run folder (no config.yaml)")
    if (run / "training.json").is_file():
        raise CheckpointError(f"{run} has already finished training (training.json exists); nothing to resume")
    ckpt = run / LAST
    _relocate(ckpt, read_training_checkpoint(ckpt), run)
    overrides = [f"data.root={data_root}"] if data_root else []
    cfg = load_config(run / "config.yaml", overrides)
    recorded = json.loads((run / "data.json").read_text()).get("fingerprint") if (run / "data.json").is_file() else None
    if recorded:
        index = load_index(cfg.data.dataset, cfg.data.root)
        now = data_fingerprint(index, read_manifest(run / "manifest.csv", index))
        changed = [name for name in ("train", "val", "test") if now[name] != recorded.get(name)]
        if changed:
            raise DataError(f"the {'/'.join(changed)} images in {index.root} differ from those {run} started with "
                            f"(data fingerprint); refusing to resume on different data")
    return train(cfg, run, quiet=quiet, resume_from=ckpt)
