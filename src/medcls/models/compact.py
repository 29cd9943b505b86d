"""A compact CNN for this task: a strided stem, BatchNorm double-conv stages, global
average pooling — about 0.6 M parameters, where the seed CNN's Flatten + Dense head
alone has 0.8 M, and cheap enough to train at 224 px on a CPU."""

from __future__ import annotations

from torch import nn

from medcls.models import ARCHS


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@ARCHS.register("compact-cnn")
def compact_cnn(
    in_channels: int, num_outputs: int, image_size: int,
    stem: int = 32, widths: tuple[int, ...] = (32, 64, 128, 128), dropout: float = 0.2,
) -> nn.Module:
    """Stem (3x3 stride 2), then per stage: 2x2 max-pool and two 3x3 conv-BN-ReLU; GAP, dropout, linear."""
    layers: list[nn.Module] = _conv(in_channels, stem, stride=2) + _conv(stem, stem)
    c = stem
    for w in widths:
        layers += [nn.MaxPool2d(2), *_conv(c, w), *_conv(w, w)]
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, num_outputs))
