import pytest
import torch
from torch import nn

from medcls.models import ARCHS, build_model


def test_seed_cnn_is_the_original_recipe():
    net = build_model("seed-cnn", 1, 2, 224).backbone
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    dense = [m for m in net if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 64, 64, 128, 256]
    assert all(c.kernel_size == (3, 3) and c.padding == (0, 0) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net) == 5
    assert [d.out_features for d in dense] == [128, 64, 1]
    assert dense[0].in_features == 256 * 5 * 5  # 224 -> 5 after five valid conv + pool stages


@pytest.mark.parametrize("arch", ARCHS.names())
@pytest.mark.parametrize("channels, classes", [(1, 2), (3, 5)])
def test_every_architecture_builds_and_runs(arch, channels, classes):
    size = 96 if arch == "seed-cnn" else 64
    net = build_model(arch, channels, classes, size).eval()
    with torch.no_grad():
        out = net(torch.rand(2, channels, size, size))
    assert out.shape == (2, 1 if classes == 2 else classes)


def test_too_small_input_is_a_clear_error():
    with pytest.raises(ValueError, match="image size 32 is too small"):
        build_model("seed-cnn", 1, 2, 32)
