"""Architecture registry. Every architecture is a function
``(in_channels, num_outputs, image_size, **kwargs) -> nn.Module`` producing logits;
``num_outputs`` is 1 for two classes (sigmoid) and the class count otherwise (softmax)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from medcls.core.registry import Registry

ArchFn = Callable[..., nn.Module]
ARCHS: Registry[ArchFn] = Registry("architecture")


def num_outputs(num_classes: int) -> int:
    return 1 if num_classes == 2 else num_classes


class ImageClassifier(nn.Module):
    """Normalisation + backbone: takes float images in [0, 1], ``(N, C, H, W)``, returns logits.

    ``per_image`` standardises each image by its own mean and std instead of the
    training set's, so a darker or flatter exposure from another site looks the same.
    """

    def __init__(self, backbone: nn.Module, mean: list[float], std: list[float], per_image: bool = False):
        super().__init__()
        self.backbone = backbone
        self.per_image = per_image
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_image:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True)
            return self.backbone((x - mean) / (std + 1e-3))  # eps: flat images stay finite
        return self.backbone((x - self.mean) / self.std)


def build_model(
    arch: str, in_channels: int, num_classes: int, image_size: int,
    mean: list[float] | None = None, std: list[float] | None = None, input_norm: str = "dataset", **kwargs,
) -> ImageClassifier:
    """Build a registered architecture wrapped with its input normalisation (``dataset`` or ``per-image``)."""
    backbone = ARCHS.get(arch)(in_channels, num_outputs(num_classes), image_size, **kwargs)
    return ImageClassifier(backbone, mean or [0.5] * in_channels, std or [0.25] * in_channels,
                           per_image=input_norm == "per-image")


# Importing the architecture modules registers them.
from medcls.models import compact, seed_cnn, timm_nets, torchvision_nets  # noqa: E402,F401
