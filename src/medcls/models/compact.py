"""A compact CNN for this task: BatchNorm, global pooling, ~1M parameters."""

from __future__ import annotations

from torch import nn

from medcls.models import ARCHS


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


@ARCHS.register("compact-cnn")
def compact_cnn(
    in_channels: int, num_outputs: int, image_size: int,
    widths: tuple[int, ...] = (24, 48, 96, 192, 256), dropout: float = 0.2,
) -> nn.Module:
    """Five double-conv BatchNorm blocks, global average pooling, dropout, linear head."""
    blocks, c = [], in_channels
    for w in widths:
        blocks.append(_block(c, w))
        c = w
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, num_outputs))
