"""The training run: data -> model -> Lightning fit (best checkpoint, early stopping,
LR schedule, CSV log) -> temperature and operating point fitted on validation ->
one self-contained ``model.pt`` in the run folder."""

from __future__ import annotations

import logging
import os
import platform
import resource
import subprocess
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import (
    EarlyStopping,
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.loggers import CSVLogger

from medcls.config import Config, ModelConfig, save_config
from medcls.config.checks import check_run_config
from medcls.core.io import atomic_write_json
from medcls.core.progress import task
from medcls.data.fingerprint import data_fingerprint, file_sha256
from medcls.data.prepared import PreparedData, make_loader, prepare_data
from medcls.data.split import split_digest, write_manifest
from medcls.models import build_model
from medcls.models.checkpoint import ModelInfo, save_checkpoint
from medcls.models.pretrained import input_stats, load_pretrained
from medcls.training.calibrate import fit_calibration, record_calibration
from medcls.training.checkpointing import (
    AtomicCheckpointIO,
    ExactResume,
    carry_over_log,
)
from medcls.training.module import LitClassifier
from medcls.training.run_dir import claim_run_dir, new_run_dir

log = logging.getLogger(__name__)


class EpochTimer(pl.Callback):
    """Wall time, images/s and data-wait fraction of each training epoch (data loading
    included, validation not)."""

    def __init__(self):
        self.epochs: list[dict] = []
        self._start = self._batch_end = 0.0
        self._images = 0
        self._waiting = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = self._batch_end = time.perf_counter()
        self._images, self._waiting = 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._waiting += time.perf_counter() - self._batch_end  # fetching this batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._images += len(batch[1])
        self._batch_end = time.perf_counter()

    def on_validation_epoch_start(self, trainer, pl_module):
        if not trainer.sanity_checking and self._images:
            seconds = time.perf_counter() - self._start
            self.epochs.append({"epoch": trainer.current_epoch, "seconds": round(seconds, 3),
                                "images": self._images, "images_per_s": round(self._images / seconds, 2),
                                "data_wait_fraction": round(self._waiting / seconds, 4)})
            self._images = 0

    # kept in checkpoints, so a resumed run still reports every epoch
    def state_dict(self) -> dict:
        return {"epochs": self.epochs}

    def load_state_dict(self, state: dict) -> None:
        self.epochs = list(state["epochs"])


def environment() -> dict:
    """Versions and commit that produced a run (for reproducibility)."""
    import lightning
    import torchvision

    from medcls.core.version import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"medcls": __version__, "git_commit": commit, "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "lightning": lightning.__version__,
            "numpy": np.__version__, "platform": platform.platform(), "processor": platform.processor(),
            "threads": torch.get_num_threads()}


def data_summary(data: PreparedData) -> dict:
    """Counts per split and class of what is actually used, and what was skipped."""
    counts = {name: {c: int((data.labels[name] == k).sum()) for k, c in enumerate(data.classes)}
              for name in data.labels}
    return {"dataset": data.index.name, "root": str(data.index.root), "classes": data.classes,
            "color_mode": data.color_mode, "image_size": data.image_size, "counts": counts,
            "unreadable": data.cache.errors, "ignored_files": [str(p) for p in data.index.ignored],
            "audit": data.audit}


def _sampler(labels: np.ndarray, seed: int) -> torch.utils.data.WeightedRandomSampler:
    counts = np.bincount(labels)
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    return torch.utils.data.WeightedRandomSampler(weights, len(labels), replacement=True,
                                                  generator=torch.Generator().manual_seed(seed))


def _summary_wanted() -> bool:
    """Lightning's model table (parameters, "Total FLOPs: 0" on CPU) only where its logger is at INFO,
    as Lightning sets it on import; the command line lowers it unless --verbose."""
    return logging.getLogger("lightning.pytorch.callbacks.model_summary").isEnabledFor(logging.INFO)


class EpochBar(RichProgressBar):
    """Lightning's rich bar, with epochs counted from 1 ("epoch 1/1", not "Epoch 0/0")."""

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning's hook for the bar's label
        total = self.trainer.max_epochs
        return f"epoch {current_epoch + 1}" + (f"/{total}" if total and total > 0 else "")


def _launched_worker() -> bool:
    """True in a process that a distributed launcher started for a rank other than 0."""
    env = os.environ
    return env.get("RANK", env.get("LOCAL_RANK", "0")) != "0" or env.get("NODE_RANK", "0") != "0"


def train(cfg: Config, run_dir: str | Path | None = None, quiet: bool = False,
          resume_from: str | Path | None = None, callbacks: list[pl.Callback] | None = None,
          force: bool | None = False) -> Path:
    """Train a model as ``cfg`` says; return the run folder (holding ``model.pt``).

    The run folder is ``run_dir`` if given (refused if it holds files, unless ``force``; None: the
    caller has claimed it, see :func:`~medcls.training.run_dir.claim_run_dir`), else a new
    ``OUTPUT_DIR/NAME-TIMESTAMP``.
    ``resume_from`` (a Lightning checkpoint in ``run_dir``) continues an interrupted run on
    its own split; use :func:`medcls.training.resume.resume`. ``callbacks`` are extra
    Lightning callbacks. Under DDP, processes that Lightning launches for ranks > 0 reuse
    rank 0's run folder; with torchrun or SLURM pass the same ``run_dir`` to every rank."""
    threads = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)  # for this run only: restored below
    try:
        return _fit_then_calibrate(cfg, run_dir, quiet, resume_from, callbacks, force)
    finally:
        torch.set_num_threads(threads)


def resolved_input_norm(model: ModelConfig) -> str:
    """``model.input_norm`` with ``auto`` decided: the weights' normalisation for a pretrained network."""
    if model.input_norm == "auto":
        return "weights" if model.pretrained != "none" else "dataset"
    return model.input_norm


def _fit_then_calibrate(cfg: Config, run_dir: str | Path | None, quiet: bool, resume_from: str | Path | None,
                        callbacks: list[pl.Callback] | None, force: bool | None) -> Path:
    tcfg = cfg.train
    with task("checking the config, reading the data", enabled=not quiet):
        check_run_config(cfg)
        if run_dir is not None and resume_from is None and force is not None and not _launched_worker():
            claim_run_dir(run_dir, force)  # rank 0 only: the other ranks find the files it has begun to write
        pl.seed_everything(tcfg.seed, workers=True, verbose=False)
        data = prepare_data(cfg.data, Path(run_dir) / "manifest.csv" if resume_from else None, quiet=quiet)
    if run_dir is None and _launched_worker() and "MEDCLS_RUN_DIR" in os.environ:
        run_dir = os.environ["MEDCLS_RUN_DIR"]
    run = Path(run_dir) if run_dir else new_run_dir(cfg)
    run.mkdir(parents=True, exist_ok=True)
    fingerprint = data_fingerprint(data.index, data.splits)
    if not _launched_worker():
        os.environ["MEDCLS_RUN_DIR"] = str(run)  # inherited by the rank processes Lightning launches
        save_config(cfg, run / "config.yaml")
        write_manifest(run / "manifest.csv", data.index, data.splits)
        atomic_write_json(run / "environment.json", environment())
        atomic_write_json(run / "data.json", {**data_summary(data), "fingerprint": fingerprint,
                                              "manifest_sha256": file_sha256(run / "manifest.csv")})

    mean, std = data.channel_stats()
    input_norm = resolved_input_norm(cfg.model)
    net = build_model(cfg.model.arch, data.channels, len(data.classes), cfg.data.image_size, mean, std,
                      input_norm, **cfg.model.kwargs)
    pretrained = None
    if cfg.model.pretrained != "none":
        pretrained = load_pretrained(net.backbone, cfg.model.arch, cfg.model.pretrained)
        if input_norm == "weights":
            mean, std = input_stats(pretrained, data.channels)
            net.mean.copy_(torch.tensor(mean).view_as(net.mean))
            net.std.copy_(torch.tensor(std).view_as(net.std))
    if tcfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    counts = np.bincount(data.labels["train"], minlength=len(data.classes)).tolist()
    loaded = frozenset(f"backbone.{k}" for k in pretrained.loaded) if pretrained else frozenset()
    module = LitClassifier(net, len(data.classes), tcfg, cfg.augment, counts, pretrained=loaded)

    sampler = _sampler(data.labels["train"], tcfg.seed) if tcfg.imbalance == "sampler" else None
    train_loader = make_loader(data, "train", cfg.data.batch_size, sampler=sampler, shuffle=True, seed=tcfg.seed)
    val_loader = make_loader(data, "val", cfg.data.batch_size)

    mode = "min" if tcfg.monitor.endswith("loss") else "max"
    best = ModelCheckpoint(dirpath=run / "checkpoints", filename="best", monitor=tcfg.monitor, mode=mode)
    # every epoch, for --resume (save_last only saves when the monitored metric improved); after
    # ``best`` so that it holds this epoch's best-so-far
    latest = ModelCheckpoint(dirpath=run / "checkpoints", filename="last")
    timer = EpochTimer()
    callbacks = [best, latest, timer, LearningRateMonitor("epoch"), ExactResume(train_loader), *(callbacks or [])]
    if tcfg.ema:
        callbacks.append(EMAWeightAveraging(decay=tcfg.ema))
    if tcfg.early_stopping_patience:
        callbacks.append(EarlyStopping(tcfg.monitor, mode=mode, patience=tcfg.early_stopping_patience))
    if not quiet:
        callbacks.append(EpochBar())
    logger = CSVLogger(run, name="", version="")
    if resume_from:
        carry_over_log(logger, resume_from)
    trainer = pl.Trainer(
        max_epochs=tcfg.epochs, accelerator=tcfg.accelerator, devices=tcfg.devices, num_nodes=tcfg.num_nodes,
        strategy=tcfg.strategy, precision=tcfg.precision, callbacks=callbacks,
        logger=logger, plugins=[AtomicCheckpointIO()], enable_progress_bar=not quiet,
        enable_model_summary=not quiet and _summary_wanted(), deterministic="warn", log_every_n_steps=10,
        limit_train_batches=tcfg.limit_train_batches, default_root_dir=run, num_sanity_val_steps=0,
    )
    started = time.perf_counter()
    with warnings.catch_warnings():
        # Lightning's advice about small epochs and log intervals is noise here.
        warnings.filterwarnings("ignore", message=".*(logging interval|LeafSpec|does not have many workers|"
                                "No (positive|negative) samples|exists and is not empty).*")
        trainer.fit(module, train_loader, val_loader, ckpt_path=resume_from)
    fit_seconds = time.perf_counter() - started
    if not trainer.is_global_zero:
        return run

    if best.best_model_path:
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    net = module.net.cpu().eval().to(memory_format=torch.contiguous_format)

    with task("calibrating on validation (temperature, threshold, OOD)", enabled=not quiet):
        calibration = fit_calibration(net, cfg, data)
    info = calibration.apply(ModelInfo(
        arch=cfg.model.arch, arch_kwargs=cfg.model.kwargs, classes=data.classes, image_size=cfg.data.image_size,
        color_mode=data.color_mode, mean=mean, std=std, tta=cfg.eval.tta, input_norm=input_norm,
        positive_class=data.index.positive_class, ordinal=data.index.ordinal,
        referable_from=data.index.referable_from,
        test_digest=split_digest(data.index, data.splits, "test"), test_fingerprint=fingerprint["test"],
        config=cfg.to_dict(), pretrained=pretrained,
    ))
    save_checkpoint(run / "model.pt", net, info)
    per_epoch = timer.epochs
    device = trainer.strategy.root_device
    atomic_write_json(run / "training.json", {
        "fit_seconds": round(fit_seconds, 1), "epochs_run": trainer.current_epoch,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {os.cpu_count()} cores",
        "best_epoch_score": float(best.best_model_score) if best.best_model_score is not None else None,
        "monitor": tcfg.monitor, "per_epoch": per_epoch,
        "mean_images_per_s": round(float(np.mean([e["images_per_s"] for e in per_epoch])), 2) if per_epoch else None,
        "parameters": sum(p.numel() for p in net.parameters()),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    })
    record_calibration(run, calibration)
    log.info("trained in %.0f s; operating point: %s; temperature %.3f", fit_seconds, calibration.threshold_reason,
             calibration.temperature)
    return run
