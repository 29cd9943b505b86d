"""ReLU + 2x2 max-pool in one pass for CPU training (a C++ kernel built on first use).

PyTorch runs ``ReLU`` then ``MaxPool2d(2)`` as two ops with an int64 index per output and
a zero-filled input gradient: in the seed CNN's bf16 training step on CPU they took about a
quarter of the step, nearly all of it memory traffic (``benchmarks/roofline.py``). The kernel
in ``csrc/relu_maxpool.cpp`` reads each activation once, keeps a one-byte winner per output
and writes each gradient once; its outputs and gradients are those of the two ops exactly,
so training with it gives the same weights, only sooner.

It is a training-time switch (``train.fuse_relu_maxpool``): :func:`fused_relu_maxpool`
swaps each ReLU + max-pool pair for :class:`ReLUMaxPool2d` in place for the length of a
``with`` block and puts the original modules back after, so checkpoints, the
out-of-distribution features and Grad-CAM (which hook the ReLU's output) never see it.
The kernel is compiled once per machine with the C++ compiler torch's extensions use;
without one, or on GPU, the same modules run PyTorch's own ops.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from medcls.messages import first_line

SOURCE = Path(__file__).with_name("csrc") / "relu_maxpool.cpp"


@functools.lru_cache(maxsize=None)
def extension():
    """The compiled kernel module, or None (with one warning) where it cannot be built."""
    # Imported here, after quieting it: the module warns on import that a CPU machine has no CUDA.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # the ninja wheel's binary, where the venv is not on PATH
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass
    # -march=native: the AVX-512 loops are what make it fast. The CPU's flags and torch's version
    # are in the name, so that a home folder shared by machines never loads another's build.
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "") \
        if Path("/proc/cpuinfo").exists() else ""
    name = "medcls_relu_maxpool_" + hashlib.sha256((flags + torch.__version__).encode()).hexdigest()[:12]
    try:
        return cpp_extension.load(name, [str(SOURCE)], extra_cflags=["-O3", "-march=native"], verbose=False)
    except Exception as exc:  # no compiler, no ninja, a failed build: PyTorch's ops still work
        print(f"medcls: fused ReLU + max-pool kernel unavailable, using PyTorch's ops ({first_line(exc)})",
              file=sys.stderr)
        return None


class _ReLUMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y, winner = extension().forward(x)
        ctx.save_for_backward(winner)
        ctx.size = x.shape[2:]
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (winner,) = ctx.saved_tensors
        return extension().backward(grad, winner, *ctx.size)


def relu_maxpool2d(x: torch.Tensor) -> torch.Tensor:
    """``max_pool2d(relu(x), 2)``: the fused kernel for channels-last float CPU tensors where it
    is built, PyTorch's ops otherwise."""
    if (x.device.type == "cpu" and x.dim() == 4 and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and x.is_contiguous(memory_format=torch.channels_last) and extension() is not None):
        return _ReLUMaxPool.apply(x)
    return F.max_pool2d(F.relu(x), 2)


class ReLUMaxPool2d(nn.Module):
    """``nn.ReLU`` then ``nn.MaxPool2d(2)`` as one module (see :func:`relu_maxpool2d`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu_maxpool2d(x)


def _pool_2x2(module: nn.Module) -> bool:
    return (isinstance(module, nn.MaxPool2d) and module.kernel_size in (2, (2, 2))
            and module.stride in (2, (2, 2)) and module.padding in (0, (0, 0))
            and module.dilation in (1, (1, 1)) and not module.ceil_mode and not module.return_indices)


@contextlib.contextmanager
def fused_relu_maxpool(net: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, each ``nn.ReLU`` directly followed by a 2x2 ``nn.MaxPool2d`` in an
    ``nn.Sequential`` of ``net`` runs as one :class:`ReLUMaxPool2d` (the ReLU's place holds an
    ``nn.Identity``: indices and parameter names stay); yields how many pairs were fused.
    Both are parameterless, so the state dict is unchanged."""
    swapped: list[tuple[nn.Sequential, int, nn.Module, nn.Module]] = []
    if enabled:
        for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
            for i in range(len(seq) - 1):
                if type(seq[i]) is nn.ReLU and _pool_2x2(seq[i + 1]):
                    swapped.append((seq, i, seq[i], seq[i + 1]))
                    seq[i], seq[i + 1] = nn.Identity(), ReLUMaxPool2d()
    try:
        yield len(swapped)
    finally:
        for seq, i, relu, pool in swapped:
            seq[i], seq[i + 1] = relu, pool
