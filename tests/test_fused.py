"""The fused training kernels: ReLU + max-pool gives PyTorch's numbers exactly, the fused first
convolution PyTorch's within rounding, forward and backward; the training-time swap leaves the
network as it was."""

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import ROOT, assert_switch_keeps_weights, quick_overrides
from medcls.config import load_config
from medcls.models import build_model
from medcls.models.checkpoint import load_checkpoint
from medcls.models.fused import (
    ConvReLUMaxPool2d,
    FirstStageWithMeans,
    ReLUMaxPool2d,
    extension,
    fused_layers,
    relu_maxpool2d,
)
from medcls.ood.detector import OODFeatures
from medcls.training.train import train


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


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize(("cin", "cout", "size"), [(1, 32, (23, 20)), (3, 16, (12, 15)), (1, 64, (10, 10))])
def test_fused_first_conv_matches_pytorch_within_rounding(kernel, bf16, cin, cout, size):
    generator = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(cin, cout, 3)
    x = torch.rand(3, cin, *size, generator=generator).contiguous(memory_format=torch.channels_last)
    out_size = ((size[0] - 2) // 2, (size[1] - 2) // 2)
    grad = torch.randn(3, cout, *out_size, generator=generator)
    results = []
    for fused in (False, True):
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = ConvReLUMaxPool2d(conv)(x) if fused else F.max_pool2d(F.relu(conv(x)), 2)
        y.backward(grad.to(y.dtype))
        results.append((y.detach().float(), conv.weight.grad.clone(), conv.bias.grad.clone()))
    (y_ref, w_ref, b_ref), (y, w, b) = results
    # float32 sums in another order; in bf16 an output may round to the neighbouring value
    ulp = 2.0 ** -7 if bf16 else 1e-5
    assert torch.all((y - y_ref).abs() <= ulp * y_ref.abs().clamp(min=1.0))
    assert (y != y_ref).float().mean() < (0.01 if bf16 else 1.0)
    # the reference's weight gradient is rounded to bfloat16 by autocast; the kernel's is not
    tol = 2.0 ** -7 if bf16 else 1e-5
    assert torch.linalg.vector_norm(w - w_ref) <= tol * torch.linalg.vector_norm(w_ref)
    assert torch.linalg.vector_norm(b - b_ref) <= tol * torch.linalg.vector_norm(b_ref)


def test_fused_first_conv_falls_back_where_the_input_needs_a_gradient():
    conv = nn.Conv2d(1, 32, 3)
    x = torch.rand(2, 1, 10, 10, requires_grad=True)
    y = ConvReLUMaxPool2d(conv)(x)
    y.sum().backward()
    assert x.grad is not None and torch.equal(y, F.max_pool2d(F.relu(conv(x)), 2))


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_swap_is_undone_and_keeps_the_state_dict(padding):
    net = build_model("seed-cnn", 1, 2, 96, padding=padding)
    before = [type(m) for m in net.modules()]
    keys, parameters = list(net.state_dict()), list(net.parameters())
    with fused_layers(net) as fused:
        assert fused == 5  # one per conv stage; the dense layers' ReLUs are not followed by a pool
        # the first convolution joins its stage only where it is a "valid" one
        first = sum(isinstance(m, ConvReLUMaxPool2d) for m in net.modules())
        assert first == (padding == "valid")
        assert sum(isinstance(m, ReLUMaxPool2d) for m in net.modules()) == 5 - first
        assert list(net.parameters()) == parameters  # the same objects: the optimizer trains them in place
        assert not any(isinstance(m, nn.ReLU) for m in net.backbone[:15])
    assert [type(m) for m in net.modules()] == before and list(net.state_dict()) == keys
    with fused_layers(net, relu_maxpool=False, first_conv=False) as fused:
        assert fused == 0


@pytest.mark.slow
def test_training_with_the_fused_kernel_gives_the_same_weights(tmp_path, xray_root, kernel):
    """The switch moves fewer bytes, not different numbers: same seed, same weights."""
    assert_switch_keeps_weights(tmp_path, xray_root, "train.fuse_relu_maxpool", size=96)


@pytest.mark.slow
def test_training_with_the_fused_first_conv_stays_close(tmp_path, xray_root, kernel):
    """Not bit-identical (see medcls.models.fused), so: the same seed with and without, at the
    recipe's "valid" padding, ends with weights that differ only in the last bits' drift."""
    weights = []
    for fuse in ("true", "false"):
        cfg = load_config(ROOT / "configs" / "pneumonia-quick.yaml",
                          quick_overrides(tmp_path / fuse, xray_root, limit=40, size=96, epochs=2)
                          + ["model.kwargs.padding=valid", "train.precision=bf16-mixed",
                             f"train.fuse_first_conv={fuse}"])
        weights.append(load_checkpoint(train(cfg, quiet=True))[0].state_dict())
    for key in weights[0]:
        a, b = weights[0][key].float(), weights[1][key].float()
        assert torch.linalg.vector_norm(a - b) <= 0.05 * torch.linalg.vector_norm(b), key


@pytest.mark.parametrize("size", [96, 97])
def test_first_stage_with_means_gives_the_same_features(kernel, size):
    """Inference (the compiled backend's graph): the fused first stage hands over the first
    scale's channel means itself; logits and OOD features stay those of the plain network.
    An odd image size, where the means would miss a row, keeps the plain network."""
    torch.manual_seed(0)
    net = build_model("seed-cnn", 1, 2, size).eval()
    x = torch.rand(4, 1, size, size)
    outputs = []
    for fused in (False, True):
        model = OODFeatures(copy.deepcopy(net), size, 1, fused=fused).eval()
        backbone = model.net.backbone.to(torch.bfloat16).to(memory_format=torch.channels_last)
        backbone.register_forward_pre_hook(lambda module, args: (args[0].to(torch.bfloat16),))  # as compiled
        assert isinstance(backbone[0], FirstStageWithMeans) == (fused and size % 2 == 0)
        with torch.inference_mode():
            logits, features = model(x)
        outputs.append((logits.float(), features))
    (logits, features), (fused_logits, fused_features) = outputs
    assert fused_features.shape == features.shape
    # float32 sums in another order than oneDNN's: the same up to a rare last-bit rounding
    assert torch.allclose(fused_features, features, atol=1e-3, rtol=1e-2)
    assert torch.allclose(fused_logits, logits, atol=1e-2)


def test_without_a_compiler_pytorch_ops_take_over(tmp_path):
    """A machine that cannot build the kernels trains all the same, after one line saying so."""
    code = ("import torch, torch.nn.functional as F\n"
            "from medcls.models.fused import extension, relu_maxpool2d\n"
            "x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)\n"
            "print(torch.equal(relu_maxpool2d(x), F.max_pool2d(F.relu(x), 2)), extension())\n")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "CXX": "/bin/false"}  # a fresh build dir, no compiler
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert res.stdout.split() == ["True", "None"]
    # one warning, through logging (Python's last-resort handler prints it where nothing is configured)
    messages = [line for line in res.stderr.splitlines() if "kernels unavailable" in line]
    assert len(messages) == 1 and "fused training kernels unavailable, using PyTorch's ops" in messages[0]
