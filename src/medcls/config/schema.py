"""Typed run configuration: dataclasses with the one set of defaults, loaded from
YAML presets (files, or by name from the package's ``medcls/configs/``) and
overridable with ``section.key=value`` strings.

Every key is checked before any work starts: unknown keys, wrong types and
impossible values raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from medcls.core.paths import default_cache_dir, default_data_root


class ConfigError(ValueError):
    """A configuration key is unknown, of the wrong type or out of range."""


PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"  # shipped with the package (package-data)


def preset_names() -> list[str]:
    """The presets shipped with the package, loadable by name (``load_config("pneumonia-quick")``)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_preset(path: str | Path) -> Path:
    """A YAML file: ``path`` itself if it is a file, else the shipped preset of that name (with or
    without ``.yaml``); raises :class:`ConfigError` listing the presets when it is neither."""
    path = Path(path)
    if path.is_file():
        return path
    if path.parent == Path("."):
        shipped = PRESETS_DIR / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
        if shipped.is_file():
            return shipped
    raise ConfigError(f"config file not found: {path} (a file, or a preset name: {', '.join(preset_names())})")


@dataclass
class DataConfig:
    dataset: str = "pneumonia"
    root: str = field(default_factory=default_data_root)
    image_size: int = 224
    color_mode: Optional[str] = None  # None: the dataset's default (grayscale X-rays, RGB fundus)
    val_fraction: float = 0.15  # by patient / duplicate group; of train/ if test/ is given, else of all
    test_fraction: float = 0.15  # only for data sets that ship no test split
    split_seed: int = 42
    manifest: Optional[str] = None  # reuse a split manifest CSV instead of splitting
    audit: Optional[bool] = None  # find duplicates before splitting; None: the data set's default (on: retinopathy)
    exclude_conflicts: bool = True  # with the audit: images filed under two classes stay out of val/test
    limit_per_class: Optional[int] = None  # per split and class; for quick runs and tests
    batch_size: int = 32
    cache_dir: str = field(default_factory=default_cache_dir)
    workers: int = 0  # decode processes for the cache (0: one per core)


@dataclass
class AugmentConfig:
    enabled: bool = True
    rotation: float = 10.0  # degrees, +/-
    shift: float = 0.1  # fraction of the side, +/-
    zoom: float = 0.1  # +/- scale
    brightness: float = 0.1  # +/- added, on [0, 1] intensities
    contrast: float = 0.1  # +/- relative
    hflip: bool = False  # off for X-rays: anatomy is not left-right symmetric
    # switches against shortcuts (medcls stress measures them; benchmarks/stress_switches.py compares them):
    crop_scale: float = 1.0  # random resized crops: smallest area share kept (e.g. 0.36: down to 60% a side); 1 = off
    crop_aspect: float = 0.0  # aspect jitter of those crops: ratio within 1/(1+a)..1+a; 0 = off
    gamma: float = 0.0  # gamma 2**u, u within +/-gamma (exposure curve of another site); 0 = off
    border: float = 0.0  # probability of a black border band up to 15% of the side (collimation); 0 = off
    erase: float = 0.0  # probability of one black or white cut-out (burned-in letters, markers); 0 = off
    mixup: float = 0.0  # Beta(alpha, alpha); 0 = off


@dataclass
class ModelConfig:
    arch: str = "seed-cnn"
    kwargs: dict = field(default_factory=dict)
    # dataset: subtract the training set's mean, divide by its std; per-image: each image by its own
    # (inside the network, so export and serving inherit it; undoes exposure and contrast shifts between sites);
    # weights: the pretrained weights' own; auto: weights when model.pretrained is set, dataset otherwise
    input_norm: str = "auto"
    # none | imagenet (the weights registered for the architecture, medcls.models.pretrained) | a weights file
    pretrained: str = "none"


@dataclass
class TrainConfig:
    epochs: int = 10
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: str = "auto"  # auto (bce for 2 classes, ce otherwise) | bce | ce
    label_smoothing: float = 0.0
    imbalance: str = "class_weights"  # class_weights | sampler | none
    scheduler: str = "plateau"  # plateau | cosine | none
    warmup_epochs: int = 0
    lr_factor: float = 0.5  # plateau
    lr_patience: int = 2  # plateau
    monitor: str = "val_auc"  # metric for best checkpoint, early stopping, plateau
    early_stopping_patience: int = 5  # 0 = off
    precision: str = "32"  # 32 | bf16-mixed | 16-mixed
    channels_last: bool = True  # NHWC: oneDNN's fast path for convolutions on CPU
    # keep freed memory for the next step (glibc): no page faults per step; applied by the entry point
    # (`medcls train` / `run`, medcls.core.allocator): library calls leave malloc alone
    reuse_memory: bool = True
    # fused CPU training kernels (medcls.models.fused): ReLU + 2x2 max-pool (bit-identical), and the
    # first 3x3 convolution with them (its output never stored; float32 weight gradient)
    fuse_relu_maxpool: bool = True
    fuse_first_conv: bool = True
    head_warmup_epochs: int = 0  # fine-tuning: first epochs train only the fresh head (pretrained tensors frozen)
    backbone_lr_scale: float = 1.0  # fine-tuning: learning rate of the pretrained tensors relative to train.lr
    no_decay_norm_bias: bool = False  # no weight decay on norms and biases (the 1-D tensors)
    # fine-tuning: pretrained BatchNorm layers keep the weights' running statistics (their scale and shift
    # still learn); during head warm-up they are kept anyway
    freeze_bn: bool = False
    ema: float = 0.0  # decay of an exponential moving average of the weights (e.g. 0.999); 0 = off
    seed: int = 0
    threads: Optional[int] = None  # torch intra-op threads; None = torch's choice
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    limit_train_batches: Optional[int] = None  # for quick checks


@dataclass
class EvalConfig:
    threshold_rule: str = "youden"  # youden | sensitivity | f1 | fixed
    target_sensitivity: float = 0.95  # for threshold_rule=sensitivity
    fixed_threshold: float = 0.5
    # what the temperature and threshold are fitted on: the validation split, or it together with its
    # copies under the site shifts of medcls.stress.operating (tighter collimation, exposure, contrast)
    threshold_on: str = "validation"  # validation | stressed
    # ordinal grades: argmax, or cut-points on the expected grade fitted on validation for QWK
    ordinal_decision: str = "argmax"
    calibrate: bool = True  # temperature scaling on validation
    bootstrap: int = 1000  # bootstrap draws for confidence intervals (0 = off)
    tta: bool = False  # test-time augmentation (small zooms and shifts), also used for val decisions
    ood_method: str = "mahalanobis-multiscale"  # out-of-distribution score (see medcls.ood.detector.METHODS)
    ood_flag_rate: float = 0.05  # fraction of in-distribution (validation) images the OOD flag may reject
    # fit the OOD Gaussians on augmented copies of the training images too (the training augmentation)
    ood_augmented: bool = False
    # stress validation (medcls.stress) in `medcls evaluate`: the validation split replayed under perturbations
    stress: bool = True
    stress_limit: Optional[int] = 32  # validation images per class (seeded subset; None: all) for evaluate and stress


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs"
    name: str = "run"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_CHOICES = {
    ("data", "color_mode"): {None, "grayscale", "rgb"},
    ("model", "input_norm"): {"auto", "dataset", "weights", "per-image"},
    ("train", "optimizer"): {"adam", "adamw", "sgd"},
    ("train", "loss"): {"auto", "bce", "ce"},
    ("train", "imbalance"): {"class_weights", "sampler", "none"},
    ("train", "scheduler"): {"plateau", "cosine", "none"},
    ("train", "precision"): {"32", "bf16-mixed", "16-mixed"},
    ("eval", "threshold_on"): {"validation", "stressed"},
    ("eval", "threshold_rule"): {"youden", "sensitivity", "f1", "fixed"},
    ("eval", "ordinal_decision"): {"argmax", "cutpoints"},
    ("eval", "ood_method"): {"mahalanobis-multiscale", "mahalanobis-early", "mahalanobis-penultimate", "knn-grid",
                             "energy", "max-logit"},
}

_RANGES = {
    ("data", "image_size"): (8, 4096),
    ("data", "val_fraction"): (0.0, 0.9),
    ("data", "test_fraction"): (0.0, 0.9),
    ("data", "batch_size"): (1, 1 << 16),
    ("data", "split_seed"): (0, 2**32 - 1),
    ("data", "workers"): (0, 4096),
    ("train", "epochs"): (1, 100000),
    ("train", "lr"): (1e-12, 10.0),
    ("train", "label_smoothing"): (0.0, 0.5),
    ("train", "ema"): (0.0, 0.99999),
    ("train", "seed"): (0, 2**32 - 1),  # outside it Lightning silently picks a random seed
    ("train", "weight_decay"): (0.0, 1.0),
    ("train", "warmup_epochs"): (0, 100000),
    ("train", "head_warmup_epochs"): (0, 100000),
    ("train", "backbone_lr_scale"): (0.0, 100.0),
    ("train", "lr_factor"): (0.0, 0.999),
    ("train", "lr_patience"): (0, 100000),
    ("train", "early_stopping_patience"): (0, 100000),
    ("train", "threads"): (1, 4096),
    ("train", "limit_train_batches"): (1, 1 << 40),
    ("eval", "bootstrap"): (0, 1_000_000),
    ("eval", "target_sensitivity"): (0.0, 1.0),
    ("eval", "fixed_threshold"): (0.0, 1.0),
    ("eval", "ood_flag_rate"): (0.001, 0.5),
    ("eval", "stress_limit"): (1, 1 << 40),
    ("augment", "zoom"): (0.0, 0.9),
    ("augment", "shift"): (0.0, 0.9),
    ("augment", "rotation"): (0.0, 180.0),
    ("augment", "brightness"): (0.0, 1.0),
    ("augment", "contrast"): (0.0, 1.0),
    ("augment", "mixup"): (0.0, 10.0),
    ("augment", "crop_scale"): (0.05, 1.0),
    ("augment", "crop_aspect"): (0.0, 2.0),
    ("augment", "gamma"): (0.0, 2.0),
    ("augment", "border"): (0.0, 1.0),
    ("augment", "erase"): (0.0, 1.0),
}


def _check_type(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(key, value, inner[0])
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-4" as a string
        except ValueError:
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}") from None
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. precision: 32
    base = origin or tp
    if base is bool and not isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if base in (int, float) and isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if not isinstance(value, base):
        raise ConfigError(f"config key '{key}': expected {base.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, values: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{dotted}' (known: {', '.join(sorted(names))})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' must be a mapping")
            kwargs[key] = _build(tp, value, dotted + ".")
        else:
            kwargs[key] = _check_type(dotted, value, tp)
    return cls(**kwargs)


def validate(cfg: Config) -> Config:
    """Range and choice checks across the whole config; raises :class:`ConfigError`."""
    for (section, key), allowed in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            shown = ", ".join(sorted(str(a) for a in allowed))
            raise ConfigError(f"config key '{section}.{key}': {value!r} is not one of {shown}")
    for (section, key), (lo, hi) in _RANGES.items():
        value = getattr(getattr(cfg, section), key)
        if value is not None and not lo <= value <= hi:
            raise ConfigError(f"config key '{section}.{key}': {value} is outside [{lo}, {hi}]")
    if cfg.data.val_fraction + cfg.data.test_fraction >= 1.0:
        raise ConfigError("config keys 'data.val_fraction' + 'data.test_fraction' must be below 1")
    if cfg.data.limit_per_class is not None and cfg.data.limit_per_class < 1:
        raise ConfigError("config key 'data.limit_per_class' must be at least 1")
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` -> (["train", "epochs"], 3); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form section.key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def _merge(base: dict, path: list[str], value: Any) -> None:
    node = base
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{'.'.join(path)}': '{part}' is not a section")
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML file or a shipped preset by name (e.g. ``"pneumonia-quick"``; None: the defaults)
    and apply ``section.key=value`` overrides."""
    values: dict = {}
    if path is not None:
        path = resolve_preset(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not a YAML text file (byte {exc.start} is not UTF-8)") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        values = loaded
    for text in overrides or []:
        keys, value = parse_override(text)
        _merge(values, keys, value)
    return validate(_build(Config, values, ""))


def config_from_dict(values: dict) -> Config:
    """Rebuild a :class:`Config` from :meth:`Config.to_dict` output (e.g. stored in a checkpoint)."""
    return validate(_build(Config, values, ""))


def save_config(cfg: Config, path: str | Path) -> None:
    from medcls.core.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
