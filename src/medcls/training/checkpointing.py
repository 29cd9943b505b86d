"""What makes a training run resumable exactly: Lightning restores the weights, optimizer,
LR schedule, epoch counters and callback states (best checkpoint, early stopping) from
``RUN/checkpoints/last.ckpt``; :class:`ExactResume` adds what Lightning leaves out
(random states, the interrupted epoch-end scheduler step), and
:class:`AtomicCheckpointIO` makes sure ``last.ckpt`` is never half-written and carries
the SHA-256 of its contents, checked on every read: torch.load does not notice a
flipped bit inside tensor data, which would resume silently to other weights."""

from __future__ import annotations

import csv
import random
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medcls.core.io import atomic_torch_save
from medcls.models.checkpoint import CheckpointError, check_digest, content_digest, safe_torch_load

LAST = Path("checkpoints") / "last.ckpt"
DIGEST = "medcls_sha256"  # top-level key of a Lightning checkpoint; Lightning ignores it


class ExactResume(pl.Callback):
    """What a resumed run needs beyond Lightning's checkpoint to continue bit for bit.

    1. The torch (and CUDA), numpy and Python random states and the train loader's
       shuffling/sampling generators. Checkpoints are written at the end of an epoch, after
       its last random draw, so the saved states are those the next epoch starts from; a
       run killed mid-epoch resumes from the previous epoch's end and replays that epoch.
    2. The epoch-end learning-rate scheduler step. Lightning writes the checkpoint before
       that step and, on resume, skips it (it has no metric for ReduceLROnPlateau), so the
       monitored value is saved here and the step is taken when training restarts."""

    def __init__(self, loader: torch.utils.data.DataLoader):
        found = [loader.generator, getattr(loader.sampler, "generator", None)]
        self.generators: list[torch.Generator] = []
        for g in found:
            if g is not None and all(g is not h for h in self.generators):
                self.generators.append(g)
        self._trainer: Optional[pl.Trainer] = None
        self._pending_step: Optional[dict[str, Any]] = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        # plain lists and tensors only: the checkpoint must load with torch.load(weights_only=True)
        np_state, py_state = np.random.get_state(legacy=False), random.getstate()
        trainer = self._trainer
        assert trainer is not None
        metrics = {c.monitor: float(trainer.callback_metrics[c.monitor]) for c in trainer.lr_scheduler_configs
                   if c.monitor and c.monitor in trainer.callback_metrics}
        return {
            "scheduler_step": {"epoch": trainer.current_epoch, "metrics": metrics},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"]),
                      "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
            "python": [py_state[0], list(py_state[1]), py_state[2]],
            "generators": [g.get_state() for g in self.generators],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Called while the checkpoint is restored, before the train loader's iterator is made.
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        n = state["numpy"]
        np.random.set_state({"bit_generator": "MT19937",
                             "state": {"key": np.array(n["key"], dtype=np.uint32), "pos": n["pos"]},
                             "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        for g, saved in zip(self.generators, state["generators"], strict=True):
            g.set_state(saved)
        self._pending_step = state["scheduler_step"]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pending, self._pending_step = self._pending_step, None
        if pending is None:
            return
        for config in trainer.lr_scheduler_configs:
            if config.interval != "epoch" or pending["epoch"] % config.frequency:
                continue
            if config.reduce_on_plateau:
                config.scheduler.step(pending["metrics"][config.monitor])
            else:
                config.scheduler.step()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file beside the target, flushed and renamed.

    Lightning's own writer stages the file in the system temporary folder and moves it;
    across file systems that move is a copy, which a crash can leave half-done."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        save_training_checkpoint(checkpoint, path)

    def load_checkpoint(self, path, map_location: Optional[Any] = None,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        # Lightning's resume reads through here: the digest is checked there too.
        return read_training_checkpoint(path)


def save_training_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Write a Lightning checkpoint atomically, with the SHA-256 of its contents."""
    contents = {k: v for k, v in checkpoint.items() if k != DIGEST}
    atomic_torch_save({**contents, DIGEST: content_digest(contents)}, path)


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint (memory-mapped), with a clear error if it is missing or damaged
    (unreadable, or its contents differ from their recorded SHA-256)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint to resume from: {path} does not exist "
                              f"(the run stopped before its first epoch ended; start it again)")
    ckpt = safe_torch_load(path, "training checkpoint", mmap=True)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is a torch file but not a Lightning training checkpoint")
    contents = {k: v for k, v in ckpt.items() if k != DIGEST}
    check_digest(path, contents, ckpt.get(DIGEST))
    return contents


def carry_over_log(logger: CSVLogger, ckpt_path: str | Path) -> None:
    """Keep the logged rows of the epochs ``ckpt_path`` completed (Lightning's CSV writer starts
    ``metrics.csv`` afresh); the interrupted epoch's rows are dropped, it is logged again."""
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return
    ckpt = read_training_checkpoint(ckpt_path)
    last_step = int(ckpt["global_step"])
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("step") and int(r["step"]) <= last_step]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*exists and is not empty")  # the rows are carried over here
        for row in rows:
            step = int(row.pop("step"))
            logger.log_metrics({k: v for k, v in row.items() if v not in ("", None)}, step=step)
        logger.save()
