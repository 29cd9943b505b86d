"""The original Keras recipe's CNN, layer for layer."""

from __future__ import annotations

from torch import nn

from medcls.models import ARCHS


@ARCHS.register("seed-cnn")
def seed_cnn(
    in_channels: int, num_outputs: int, image_size: int,
    widths: tuple[int, ...] = (32, 64, 64, 128, 256), dense: tuple[int, ...] = (128, 64),
    padding: str = "valid", dropout: float = 0.0,
) -> nn.Module:
    """Conv2D 32-64-64-128-256 (3x3, ReLU, 2x2 max-pool each), Flatten, Dense 128, Dense 64, output.

    ``padding="valid"`` is Keras' default, as in the original; "same" keeps small inputs usable.
    """
    if padding not in ("valid", "same"):
        raise ValueError(f"seed-cnn padding must be 'valid' or 'same', got {padding!r}")
    layers: list[nn.Module] = []
    c, side = in_channels, image_size
    for w in widths:
        layers += [nn.Conv2d(c, w, 3, padding=0 if padding == "valid" else 1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        side = (side - 2 if padding == "valid" else side) // 2
        if side < 1:
            raise ValueError(f"seed-cnn: image size {image_size} is too small for {len(widths)} conv/pool "
                             f"stages with {padding} padding (use a larger size or padding='same')")
        c = w
    layers.append(nn.Flatten())
    features = c * side * side
    for d in dense:
        layers += [nn.Linear(features, d), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        features = d
    layers.append(nn.Linear(features, num_outputs))
    return nn.Sequential(*layers)
