"""One checkpoint file holding the weights and everything needed to predict:
architecture and its arguments, input size, colour mode, normalisation, class
names, decision threshold and temperature. Written atomically with a SHA-256 of
its contents; loaded safely (``weights_only``), the digest re-checked, with a
clear error for wrong or damaged files."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from medcls.core.io import atomic_torch_save
from medcls.core.messages import first_line
from medcls.models import ImageClassifier, build_model
from medcls.models.pretrained import PretrainedRecord

log = logging.getLogger(__name__)

FORMAT = "medcls-checkpoint"
# 2: the OOD detector's state is the typed field ``ModelInfo.ood`` (was ``extras["ood"]``).
# 3: ``ModelInfo.site``, the fits to a new site, with ``pretrained`` and ``cutpoints`` (older files load with None; an older
#    medcls refuses a format-3 file as newer instead of failing on the unknown field).
# 4: ``OODState.grid`` and ``OODState.neighbours`` (the ``knn-grid`` detector; older files load with 1 and None).
FORMAT_VERSION = 4


class CheckpointError(ValueError):
    """A file is not a usable medcls checkpoint; the message names the file and why."""


@dataclass
class OODState:
    """The fitted out-of-distribution detector (see :class:`medcls.ood.detector.OODDetector`):
    plain values and tensors, so that ``torch.load(weights_only=True)`` reads it."""

    method: str
    threshold: float  # a score above it flags the image
    flag_rate: float  # share of validation flagged at ``threshold``
    blocks: list[int]  # feature block sizes (scales..., penultimate)
    gaussians: list[dict] = field(default_factory=list)  # per block: "block", "means", "whitening", "scale"
    augmented: bool = False  # the Gaussians saw augmented copies of the training images too
    grid: int = 1  # the features are channel means over grid x grid image cells per scale
    neighbours: Optional[dict] = None  # knn-grid: "blocks", "k", "mean", "projection", "reference"


@dataclass
class SiteCalibration:
    """Provenance of ``medcls calibrate``: the threshold and temperature refitted on a labelled
    sample of a new site (:mod:`medcls.site.calibrate`)."""

    data: str  # the site's folder
    data_sha256: str  # over the sorted (relative path, label, file SHA-256) of the images used
    counts: dict[str, int]  # readable images per class
    threshold_rule: str
    threshold_reason: str
    threshold_before: float
    threshold: float
    temperature_before: float
    temperature: float
    fitted_at: str  # UTC, ISO 8601
    medcls_version: str


@dataclass
class SiteAdaptation:
    """Provenance of ``medcls adapt``: BatchNorm statistics re-estimated on a site's unlabelled
    images (AdaBN, :mod:`medcls.site.adapt`), and the OOD threshold re-set on them."""

    data: str
    data_sha256: str  # over the sorted (relative path, file SHA-256) of the images used
    n_images: int
    batchnorm_layers: int
    ood_threshold_before: Optional[float]  # None: a model without an OOD detector
    ood_threshold: Optional[float]
    fitted_at: str
    medcls_version: str


@dataclass
class SiteState:
    """What was fitted to the site a model is deployed at (None: as trained)."""

    adaptation: Optional[SiteAdaptation] = None
    calibration: Optional[SiteCalibration] = None

    def __post_init__(self) -> None:  # as read back from a file
        if isinstance(self.adaptation, dict):
            self.adaptation = SiteAdaptation(**self.adaptation)
        if isinstance(self.calibration, dict):
            self.calibration = SiteCalibration(**self.calibration)


@dataclass
class ModelInfo:
    arch: str
    arch_kwargs: dict
    classes: list[str]
    image_size: int
    color_mode: str
    mean: list[float]
    std: list[float]
    threshold: float = 0.5  # binary: positive when p(positive) >= threshold
    threshold_rule: str = "argmax"
    temperature: float = 1.0
    tta: bool = False  # average logits over test-time augmentation views
    input_norm: str = "dataset"  # see medcls.config.ModelConfig.input_norm
    positive_class: Optional[str] = None
    ordinal: bool = False
    referable_from: Optional[str] = None  # ordinal grades: first grade of the binary "referable" view
    cutpoints: Optional[list[float]] = None  # ordinal grades: cuts of the expected grade (None: argmax)
    test_digest: Optional[str] = None  # SHA-256 of the frozen test split it must be evaluated on
    test_fingerprint: Optional[str] = None  # SHA-256 of that split's file contents (medcls.data.fingerprint)
    config: dict = field(default_factory=dict)
    ood: Optional[OODState] = None  # None: trained before medcls had a detector
    pretrained: Optional[PretrainedRecord] = None  # None: trained from scratch
    site: Optional[SiteState] = None  # None: not fitted to a site (medcls calibrate / adapt)

    def __post_init__(self) -> None:
        if isinstance(self.ood, dict):  # as read back from a file
            self.ood = OODState(**self.ood)
        if isinstance(self.pretrained, dict):
            self.pretrained = PretrainedRecord(**self.pretrained)
        if isinstance(self.site, dict):
            self.site = SiteState(**self.site)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return 1 if self.color_mode == "grayscale" else 3

    @property
    def binary(self) -> bool:
        return self.num_classes == 2


def upgrade_info(info: dict[str, Any]) -> dict[str, Any]:
    """A stored ``info`` of any earlier format in today's form (the one migration: format 1 kept the
    OOD state in ``extras["ood"]``; ONNX files exported then carry the same)."""
    if "extras" not in info:
        return info
    info = dict(info)
    info["ood"] = info.pop("extras").get("ood")
    return info


def build_net(info: ModelInfo) -> ImageClassifier:
    return build_model(info.arch, info.in_channels, info.num_classes, info.image_size, info.mean, info.std,
                       info.input_norm, **info.arch_kwargs)


def content_digest(obj: Any) -> str:
    """SHA-256 of nested dicts/lists of tensors, arrays and plain values (the bytes of every tensor).

    torch.load does not notice flipped bytes inside tensor data; this digest does."""
    h = hashlib.sha256()

    def feed(x: Any) -> None:
        if isinstance(x, (torch.Tensor, np.ndarray)):
            t = torch.as_tensor(x).detach().cpu().contiguous()
            h.update(f"<{t.dtype}{tuple(t.shape)}>".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(x, dict):
            h.update(b"{")
            for key in sorted(x, key=str):
                feed(str(key))
                feed(x[key])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for item in x:
                feed(item)
            h.update(b"]")
        else:
            h.update(repr(x).encode() + b";")

    feed(obj)
    return h.hexdigest()


def safe_torch_load(path: Path, what: str, **kwargs: Any) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, every failure a one-line :class:`CheckpointError`
    naming ``what`` the file should be. A file holding other Python objects is refused as such; PyTorch's
    advice to retry with ``weights_only=False`` is not passed on: for a foreign file, that runs its code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise CheckpointError(f"{path} holds Python objects besides tensors and plain values: refused, as "
                                  f"loading them could run code from the file (is it really a {what}?)") from None
        raise CheckpointError(f"{path} is not a readable {what} (truncated or damaged: {first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001  torch.load raises many types for foreign or damaged bytes
        raise CheckpointError(f"{path} is not a readable {what} (truncated or not a torch file: "
                              f"{first_line(exc)})") from None


def check_digest(path: str | Path, contents: Any, recorded: Optional[str]) -> None:
    """Refuse ``contents`` (read from ``path``) unless their :func:`content_digest` is ``recorded``;
    without a recorded digest (files from before digests, or one removed) warn: damage goes unnoticed."""
    if not recorded:
        log.warning("%s has no recorded SHA-256 (written by an older medcls, or the digest was removed): "
                    "damage to its contents cannot be detected", path)
    elif content_digest(contents) != recorded:
        raise CheckpointError(f"{path} is damaged: its contents do not match the SHA-256 recorded when it was written")


def _map_tensors(obj: Any, fn) -> Any:
    """``obj`` (nested dicts and lists) with ``fn`` applied to every tensor in it."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def save_checkpoint(path: str | Path, net: torch.nn.Module, info: ModelInfo, half: bool = False) -> Path:
    """Write ``net``'s weights and ``info`` to ``path`` atomically, with their SHA-256; ``half``: the
    floating-point tensors (weights, OOD detector) stored as float16, half the file, for a shipped
    model; :func:`load_checkpoint` puts them back into float32."""
    from medcls.core.version import __version__

    def stored(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().cpu()
        return v.half() if half and v.is_floating_point() else v

    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "medcls_version": __version__,
               "info": _map_tensors(dataclasses.asdict(info), stored),
               "state_dict": {k: stored(v) for k, v in net.state_dict().items()}}
    payload["sha256"] = content_digest({"info": payload["info"], "state_dict": payload["state_dict"]})
    atomic_torch_save(payload, path)
    return Path(path)


def load_checkpoint(path: str | Path) -> tuple[ImageClassifier, ModelInfo]:
    """Load a checkpoint: the network (eval mode, CPU) and its :class:`ModelInfo`."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    payload = safe_torch_load(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a medcls checkpoint "
                              f"(a Lightning training checkpoint? use the run's model.pt)")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer medcls ({payload.get('medcls_version')}); upgrade")
    check_digest(path, {"info": payload.get("info"), "state_dict": payload.get("state_dict")}, payload.get("sha256"))
    try:
        # a file written with half=True: its float16 tensors computed with in float32
        info = ModelInfo(**_map_tensors(upgrade_info(payload["info"]),
                                        lambda t: t.float() if t.dtype == torch.float16 else t))
        net = build_net(info)
        net.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: weights do not match the recorded architecture ({first_line(exc)})") from None
    return net.eval(), info


def checkpoint_summary(info: ModelInfo) -> dict[str, Any]:
    """The facts a user or service wants to see about a model."""
    return {"arch": info.arch, "classes": info.classes, "image_size": info.image_size,
            "color_mode": info.color_mode, "threshold": info.threshold, "threshold_rule": info.threshold_rule,
            "temperature": info.temperature, "positive_class": info.positive_class,
            "cutpoints": info.cutpoints,  # graded models: the expected grade's cuts (None: argmax)
            "site": None if info.site is None else dataclasses.asdict(info.site)}  # medcls calibrate / adapt
