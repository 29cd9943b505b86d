"""Fused conv / ReLU / 2x2 max-pool stages on CPU (C++ kernels built on first use).

PyTorch runs ``Conv2d``, ``ReLU`` and ``MaxPool2d(2)`` as three ops, with an int64 index per
pooled output and a zero-filled input gradient: in the seed CNN's bf16 training step on CPU
ReLU and max-pool took about a quarter of the step, nearly all of it memory traffic, and the
first convolution (one input channel, the network's largest output) is memory-bound too
(``benchmarks/roofline.py``). ``csrc/fused.cpp`` has two kernels:

- ReLU + max-pool (``train.fuse_relu_maxpool``): reads each activation once, keeps a one-byte
  winner per output, writes each gradient once. Outputs and gradients are those of the two
  ops exactly, so training gives bit-identical weights, only sooner.
- the first 3x3 convolution with its ReLU and max-pool (``train.fuse_first_conv``): the
  convolution's output is never stored, and the weight gradient is summed over the pooling
  winners only. Its sums run in another order than oneDNN's and its weight gradient stays
  float32, so the weights differ in the last bits (``benchmarks/accuracy.md`` compares test
  AUC over three seeds with and without).

:func:`fused_layers` swaps matching stages of a network in place for the length of a
``with`` block (the training forward) and puts the original modules back after, so
checkpoints, the out-of-distribution features and Grad-CAM (which hook the ReLU's output)
never see them. For inference, :class:`FirstStageWithMeans` runs the first stage in the
compiled backend's graph, handing over the channel means the OOD features need. The
kernels are compiled once per machine with the C++ compiler torch's
extensions use; without one, on GPU, or for other layouts the same modules run PyTorch's ops.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from medcls.core.logs import quieted
from medcls.core.messages import first_line

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "fused.cpp"


@functools.lru_cache(maxsize=None)
def extension():
    """The compiled kernels' module, or None (with one warning) where they cannot be built."""
    # Imported and used quieted: the module warns that a CPU machine has no CUDA.
    with quieted("torch.utils.cpp_extension"):
        return _build()


def _unbuilt(cpp_extension, name: str) -> bool:
    """Whether loading ``name`` will compile it (a silent minute or more otherwise)."""
    try:  # a private helper of PyTorch's: if it goes, the message does
        built = Path(cpp_extension._get_build_directory(name, verbose=False)) / f"{name}.so"
    except Exception:  # noqa: BLE001
        return False
    return not built.is_file() or built.stat().st_mtime < SOURCE.stat().st_mtime


def _build():
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # the ninja wheel's binary, where the venv is not on PATH
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass
    # -march=native: the AVX-512 loops are what make it fast. The CPU's flags and torch's version
    # are in the name, so that a home folder shared by machines never loads another's build; so is
    # the source's path, because PyTorch rebuilds a folder whose build file names another source:
    # two checkouts sharing one folder would rebuild in turn, each waiting on the other's lock.
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "") \
        if Path("/proc/cpuinfo").exists() else ""
    key = flags + torch.__version__ + str(SOURCE.resolve())
    name = "medcls_fused_" + hashlib.sha256(key.encode()).hexdigest()[:12]
    if _unbuilt(cpp_extension, name):
        log.info("building the fused CPU training kernels (once per machine and install; a minute or two)")
    try:
        # -fopenmp: at::parallel_for is inline OpenMP; without it the kernel runs on one thread. The
        # library it links (libgomp.so.1) is the one torch has loaded already.
        return cpp_extension.load(name, [str(SOURCE)], extra_cflags=["-O3", "-march=native", "-fopenmp"],
                                  extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as exc:  # no compiler, no ninja, a failed build: PyTorch's ops still work
        log.warning("fused training kernels unavailable, using PyTorch's ops (%s)", first_line(exc))
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


def _autocast_bf16() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def _first_stage_inputs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, bf16: bool
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The float32 (channels-last) input, weight and bias the first-stage kernels take; with
    ``bf16`` rounded to bfloat16 first, as a bfloat16 convolution (autocast's or bfloat16
    weights') would see them."""
    if bf16:
        x, weight, bias = (t.to(torch.bfloat16) for t in (x, weight, bias))
    return x.float().contiguous(memory_format=torch.channels_last), weight.detach().float(), bias.detach().float()


class _ConvReLUMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, bf16: bool) -> torch.Tensor:
        x, weight, bias = _first_stage_inputs(x, weight, bias, bf16)
        y, winner = extension().conv_forward(x, weight, bias, bf16)
        ctx.save_for_backward(x, winner)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, winner = ctx.saved_tensors
        grad_weight, grad_bias = extension().conv_backward(grad, winner, x)
        return None, grad_weight, grad_bias, None


class ConvReLUMaxPool2d(nn.Module):
    """A 3x3 "valid" ``nn.Conv2d`` of 1 or 3 input channels (16, 32 or 64 outputs), ``nn.ReLU``
    and ``nn.MaxPool2d(2)`` as one module. The kernel runs where the input needs no gradient
    (a network's first layer) on CPU in float32, or in bfloat16 autocast; PyTorch's ops elsewhere.
    It wraps the network's own convolution: the same parameters, trained in place."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        autocast = torch.is_autocast_enabled("cpu")
        if (x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad and x.dim() == 4
                and (not autocast or _autocast_bf16()) and extension() is not None):
            return _ConvReLUMaxPool.apply(x, self.conv.weight, self.conv.bias, autocast)
        return relu_maxpool2d(self.conv(x))


@torch.library.custom_op("medcls::first_stage_infer", mutates_args=())
def first_stage_infer(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, bf16: bool
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference through a first-layer stage (see :class:`ConvReLUMaxPool2d`): the pooled output,
    and the channel means of the ReLU'd convolution output (float32 ``(N, C)``). An op of its
    own so that ``torch.compile`` calls the kernel from its graph."""
    y, means = extension().conv_infer(x, weight, bias, bf16)
    return y, means


@first_stage_infer.register_fake
def _(x, weight, bias, bf16):
    n, _, h, w = x.shape
    y = torch.empty((n, weight.shape[0], (h - 2) // 2, (w - 2) // 2), dtype=torch.bfloat16 if bf16 else torch.float32,
                    device=x.device, memory_format=torch.channels_last)
    return y, x.new_empty((n, weight.shape[0]))


class FirstStageWithMeans(nn.Module):
    """Inference-only first stage (convolution, ReLU, max-pool in one pass) that hands the channel
    means of its ReLU output, the out-of-distribution features of that scale, to ``sink``: the
    100 MB activation is never stored, in inference either. Runs in the input's dtype (bfloat16
    weights and input, as the compiled backend has them, round as autocast would)."""

    def __init__(self, conv: nn.Conv2d, sink: Callable[[torch.Tensor], None]):
        super().__init__()
        self.conv = conv
        self._sink = sink

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bf16 = x.dtype == torch.bfloat16 or _autocast_bf16()
        y, means = first_stage_infer(*_first_stage_inputs(x, self.conv.weight, self.conv.bias, bf16), bf16)
        self._sink(means)
        return y


def _kernels_usable(net: nn.Module) -> bool:
    """Whether the kernels can run for ``net``: its parameters on CPU, and the kernels built."""
    parameter = next(net.parameters(), None)
    return parameter is not None and parameter.device.type == "cpu" and extension() is not None


def fusable_first_stage(net: nn.Module, image_size: int) -> Optional[nn.Sequential]:
    """``net``'s backbone where it begins with a stage :class:`FirstStageWithMeans` can run (a
    first convolution the kernel is built for, ReLU, 2x2 max-pool, an even image size, CPU
    parameters, the kernel built); None otherwise."""
    backbone = getattr(net, "backbone", None)
    usable = isinstance(backbone, nn.Sequential) and _first_stage_at(backbone, 0) and image_size % 2 == 0
    return backbone if usable and _kernels_usable(net) else None


def _pool_2x2(module: nn.Module) -> bool:
    return (isinstance(module, nn.MaxPool2d) and module.kernel_size in (2, (2, 2))
            and module.stride in (2, (2, 2)) and module.padding in (0, (0, 0))
            and module.dilation in (1, (1, 1)) and not module.ceil_mode and not module.return_indices)


def _relu_pool_at(seq: nn.Sequential, i: int) -> bool:
    """``seq[i]`` is an ``nn.ReLU`` and ``seq[i + 1]`` a 2x2 max-pool."""
    return i + 1 < len(seq) and type(seq[i]) is nn.ReLU and _pool_2x2(seq[i + 1])


def _first_stage_at(seq: nn.Sequential, i: int) -> bool:
    """``seq[i]`` is a convolution the fused first-layer kernel is built for, then ReLU and max-pool."""
    conv = seq[i]
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.bias is not None and conv.in_channels in (1, 3) and conv.out_channels in (16, 32, 64)
            and _relu_pool_at(seq, i + 1))


@contextlib.contextmanager
def fused_layers(net: nn.Module, relu_maxpool: bool = True, first_conv: bool = True) -> Iterator[int]:
    """Within the block, in each ``nn.Sequential`` of ``net``: ``nn.ReLU`` directly followed by
    a 2x2 ``nn.MaxPool2d`` runs as one :class:`ReLUMaxPool2d` (``relu_maxpool``), and a first-layer
    convolution before such a pair as one :class:`ConvReLUMaxPool2d` (``first_conv``). The
    replaced places hold ``nn.Identity``, so indices stay; the modules are parameterless or
    wrap the network's own convolution, so the parameters are the same objects. Yields how
    many stages were fused; the original modules are put back on leaving, and with them the
    state dict's names. Where the kernels cannot run (GPU, no compiler) nothing is swapped:
    the network keeps its own modules, in-place ReLU included."""
    swapped: list[tuple[nn.Sequential, int, list[nn.Module]]] = []
    if (relu_maxpool or first_conv) and _kernels_usable(net):
        for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
            for i in range(len(seq) - 1):
                if first_conv and _first_stage_at(seq, i):
                    swapped.append((seq, i, list(seq[i:i + 3])))
                    seq[i], seq[i + 1], seq[i + 2] = ConvReLUMaxPool2d(seq[i]), nn.Identity(), nn.Identity()
                elif relu_maxpool and _relu_pool_at(seq, i):
                    swapped.append((seq, i, list(seq[i:i + 2])))
                    seq[i], seq[i + 1] = nn.Identity(), ReLUMaxPool2d()
    try:
        yield len(swapped)
    finally:
        for seq, start, modules in swapped:
            for offset, module in enumerate(modules):
                seq[start + offset] = module
