"""torchvision backbones (VGG-19, ResNet, DenseNet, EfficientNet, ConvNeXt), trained from
scratch by default, adapted to any channel count and input size."""

from __future__ import annotations

import torchvision.models as tvm
from torch import nn

from medcls.models import ARCHS


def _adapt_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """Replace the first convolution so it takes ``in_channels`` (same shape otherwise)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return model
            new = nn.Conv2d(in_channels, module.out_channels, module.kernel_size, module.stride,
                            module.padding, module.dilation, module.groups, module.bias is not None)
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], new)
            return model
    raise ValueError("model has no convolution")


@ARCHS.register("vgg19")
def vgg19(in_channels: int, num_outputs: int, image_size: int, batch_norm: bool = True,
          hidden: int = 256, dropout: float = 0.5) -> nn.Module:
    """VGG-19's 16 conv layers (BatchNorm by default, to train from scratch) and a
    global-pooled dense head, so any input size from 32 px works."""
    model = (tvm.vgg19_bn if batch_norm else tvm.vgg19)(weights=None)
    _adapt_first_conv(model, in_channels)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(nn.Flatten(), nn.Linear(512, hidden), nn.ReLU(inplace=True),
                                     nn.Dropout(dropout), nn.Linear(hidden, num_outputs))
    return model


def _register_torchvision(name: str, factory) -> None:
    @ARCHS.register(name)
    def build(in_channels: int, num_outputs: int, image_size: int) -> nn.Module:
        return _adapt_first_conv(factory(weights=None, num_classes=num_outputs), in_channels)

    build.__doc__ = f"torchvision {name}, from scratch, first conv adapted to the channel count."


for _name, _factory in {
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "densenet121": tvm.densenet121,
    "efficientnet_b0": tvm.efficientnet_b0,
    "convnext_tiny": tvm.convnext_tiny,
    "regnet_y_400mf": tvm.regnet_y_400mf,
}.items():
    _register_torchvision(_name, _factory)
