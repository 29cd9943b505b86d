"""The fused ReLU + max-pool kernel: PyTorch's numbers exactly, forward and backward, and a
training-time swap that leaves the network as it was."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_switch_keeps_weights
from medcls.models import build_model
from medcls.models.relu_maxpool import ReLUMaxPool2d, extension, fused_relu_maxpool, relu_maxpool2d


@pytest.fixture(scope="module")
def kernel():
    if extension() is None:
        pytest.fail("the fused kernel did not build (a C++ compiler and ninja are needed)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 32, 10, 10), (3, 64, 9, 11), (2, 7, 5, 4), (2, 128, 13, 12)])
def test_same_outputs_and_gradients_as_relu_then_max_pool(kernel, dtype, shape):
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=generator).to(dtype).contiguous(memory_format=torch.channels_last)
    x0[0, 0, :2, :2] = 0.0  # a tie at zero: no gradient
    x0[1, 1, :2, :2] = 1.5  # a positive tie: the first maximum takes the gradient, as in PyTorch
    x0[0, 2, 2:4, 2:4] = -1.0  # all negative: output 0, no gradient
    grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=generator).to(dtype)
    results = []
    for fn in (lambda x: F.max_pool2d(F.relu(x), 2), relu_maxpool2d):
        x = x0.clone().requires_grad_(True)
        y = fn(x)
        y.backward(grad)
        results.append((y.detach(), x.grad))
    (y_ref, g_ref), (y, g) = results
    assert y.is_contiguous(memory_format=torch.channels_last) and g.dtype == dtype
    assert torch.equal(y, y_ref)
    assert torch.equal(g, g_ref)
    assert g[0, 0, 0, 0] == 0 and g[1, 1, 0, 0] == grad[1, 1, 0, 0] and g[1, 1, 1, 1] == 0


def test_other_layouts_fall_back_to_pytorch():
    x = torch.randn(2, 3, 8, 8)  # NCHW: the kernel is for channels-last
    assert torch.equal(relu_maxpool2d(x), F.max_pool2d(F.relu(x), 2))
    with pytest.raises(RuntimeError, match="smaller than the 2x2 window"):
        extension().forward(torch.randn(1, 4, 1, 6).contiguous(memory_format=torch.channels_last))


def test_swap_is_undone_and_keeps_the_state_dict():
    net = build_model("seed-cnn", 1, 2, 64, padding="same")
    before = [type(m) for m in net.modules()]
    keys = list(net.state_dict())
    with fused_relu_maxpool(net) as fused:
        assert fused == 5  # one per conv stage; the dense layers' ReLUs are not followed by a pool
        assert sum(isinstance(m, ReLUMaxPool2d) for m in net.modules()) == 5
        assert list(net.state_dict()) == keys
        assert not any(isinstance(m, nn.ReLU) for m in net.backbone[:15])
    assert [type(m) for m in net.modules()] == before
    with fused_relu_maxpool(net, enabled=False) as fused:
        assert fused == 0


def test_training_with_the_fused_kernel_gives_the_same_weights(tmp_path, xray_root, kernel):
    """The switch moves fewer bytes, not different numbers: same seed, same weights."""
    assert_switch_keeps_weights(tmp_path, xray_root, "train.fuse_relu_maxpool", size=96)
