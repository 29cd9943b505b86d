"""Checks of a run configuration that need the registries or Lightning, made
before any data is read: data set and architecture names, the architecture's
arguments (built once on the ``meta`` device, which allocates nothing), the
metric to monitor, and the accelerator/devices/strategy/precision combination
(checked by Lightning's own Trainer set-up). Each failure is a
:class:`ConfigError` naming the key."""

from __future__ import annotations

import inspect
import logging
import warnings

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from medcls.config import Config, ConfigError
from medcls.core.logs import quieted
from medcls.core.messages import first_line
from medcls.core.registry import Registry
from medcls.data.datasets import DATASETS
from medcls.models import ARCHS, build_model
from medcls.models.pretrained import PretrainedWeightsError, resolve_source

# The metrics LitClassifier logs each epoch (what train.monitor may name).
MONITORS = ("val_auc", "val_loss", "val_acc", "val_qwk", "train_loss", "train_acc")  # val_qwk: multi-class only
# in_channels, num_outputs and image_size come from the data, not from model.kwargs.
_DATA_ARGS = 3


def check_run_config(cfg: Config) -> Config:
    """Raise :class:`ConfigError` for anything in ``cfg`` that would fail later in training."""
    _check_name("data.dataset", cfg.data.dataset, DATASETS)
    _check_name("model.arch", cfg.model.arch, ARCHS)
    _check_arch_args(cfg)
    _check_pretrained(cfg)
    _check_monitor(cfg)
    _check_hardware(cfg)
    return cfg


def _check_name(key: str, name: str, registry: Registry) -> None:
    if name not in registry:
        raise ConfigError(f"config key '{key}': unknown {registry.kind} '{name}' "
                          f"(available: {', '.join(registry.names())})")


def _check_arch_args(cfg: Config) -> None:
    arch, kwargs = cfg.model.arch, cfg.model.kwargs
    params = list(inspect.signature(ARCHS.get(arch)).parameters.values())
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    accepted = [p.name for p in params[_DATA_ARGS:] if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    for key in kwargs:
        if key in [p.name for p in params[:_DATA_ARGS]]:
            raise ConfigError(f"config key 'model.kwargs.{key}': set by medcls from the data, not in model.kwargs")
        if not takes_any and key not in accepted:
            raise ConfigError(f"config key 'model.kwargs.{key}': architecture '{arch}' has no argument '{key}' "
                              f"(it takes: {', '.join(accepted) or 'none'})")
    channels = 1 if cfg.data.color_mode == "grayscale" else 3
    try:
        with torch.device("meta"):  # builds the layers without allocating or initialising weights
            build_model(arch, channels, 2, cfg.data.image_size, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config keys 'model.kwargs'/'data.image_size': architecture '{arch}' cannot be built "
                          f"with image_size={cfg.data.image_size}, kwargs={kwargs}: {first_line(exc)}") from None
    except Exception:  # noqa: BLE001
        pass  # it needs real tensors to build (e.g. computes its layout with them); names were checked above


def _check_pretrained(cfg: Config) -> None:
    """A missing weights package or file fails here, before any data is read."""
    if cfg.model.pretrained == "none":
        if cfg.model.input_norm == "weights":
            raise ConfigError("config key 'model.input_norm': 'weights' needs model.pretrained (imagenet or a file)")
        return
    try:
        resolve_source(cfg.model.arch, cfg.model.pretrained)
    except PretrainedWeightsError as exc:
        raise ConfigError(f"config key 'model.pretrained': {exc}") from None


def _check_monitor(cfg: Config) -> None:
    monitor = cfg.train.monitor
    if monitor not in MONITORS:
        raise ConfigError(f"config key 'train.monitor': {monitor!r} is not one of {', '.join(MONITORS)}")
    if monitor.startswith("val_") and cfg.data.val_fraction == 0 and cfg.data.manifest is None:
        raise ConfigError(f"config key 'train.monitor': {monitor!r} needs a validation split, "
                          f"but data.val_fraction is 0")


def _check_hardware(cfg: Config) -> None:
    t = cfg.train
    try:
        # The real Trainer announces the hardware; this trial one stays quiet.
        with quieted("lightning.pytorch.utilities.rank_zero", logging.WARNING), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pl.Trainer(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                       precision=t.precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                       enable_model_summary=False)
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"config keys 'train.accelerator'/'train.devices'/'train.strategy'/'train.num_nodes'/"
                          f"'train.precision' ({t.accelerator}, {t.devices!r}, {t.strategy}, {t.num_nodes}, "
                          f"{t.precision}): {first_line(exc)}") from None
