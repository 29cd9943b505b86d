"""A checkpoint compiled for fast CPU inference with TorchInductor: the same
graph as the exported ONNX file (uint8 images in; logits, with test-time
augmentation if the model uses it, and the OOD features out), with the backbone's
weights in bfloat16 where the CPU has bf16 instructions, channels-last, and the
weights frozen into the compiled code (oneDNN pre-packs them once). The
normalisation and the outputs stay float32."""

from __future__ import annotations

import copy

import numpy as np
import torch

from medcls.core.logs import quieted
from medcls.core.messages import first_line
from medcls.core.progress import batch_starts
from medcls.inference.backend import parallel_runs
from medcls.inference.export import InferenceGraph
from medcls.models.checkpoint import ModelInfo
from medcls.ood.detector import feature_grid


class CompileError(RuntimeError):
    """TorchInductor could not compile the model (e.g. no C++ compiler on this machine)."""


def bf16_supported() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX-512 BF16 / AMX); emulated bf16 is slower than float32."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class CompiledBackend:
    """Runs the compiled inference graph on uint8 images, in batches (the interface of
    :class:`~medcls.inference.onnx_backend.OnnxBackend`). Each new batch shape compiles once (seconds):
    full batches, and calls of fewer images than one batch (e.g. the service's single images).

    ``threads``: the torch threads per run that the entry point set (``torch.set_num_threads``,
    read by the compiled kernels at compile time), for :attr:`parallel_runs`."""

    name = "pytorch-compiled"

    def __init__(self, net: torch.nn.Module, info: ModelInfo, batch_size: int = 32, threads: int | None = None):
        self.batch_size = batch_size
        self.parallel_runs = parallel_runs(threads)
        self.dtype = torch.bfloat16 if bf16_supported() else torch.float32
        graph = InferenceGraph(copy.deepcopy(net), info.image_size, info.in_channels, info.tta, fused=True,
                               grid=feature_grid(info)).eval()
        backbone = graph.net.net.backbone
        backbone.to(self.dtype).to(memory_format=torch.channels_last)
        # The float32 normalised input meets the backbone's dtype at the backbone's door.
        backbone.register_forward_pre_hook(
            lambda module, args: (args[0].to(self.dtype, memory_format=torch.channels_last),))
        self.feature_width = sum(graph.net.blocks)
        self.graph = graph  # the module compiled: uint8 images -> (logits, features)
        self._graph = torch.compile(graph, options={"freezing": True}, dynamic=False)

    @torch.inference_mode()
    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits ``(N, outputs)`` and features ``(N, D)`` (float32) of uint8 images ``(N, H, W, C)``."""
        logits, features = [], []
        for start in batch_starts(len(images), self.batch_size):
            batch = torch.from_numpy(np.array(images[start:start + self.batch_size]))  # a copy: inputs may be read-only
            n = len(batch)
            if start and n < self.batch_size:  # a short last batch runs padded: no compile for its shape
                batch = torch.cat([batch, batch.new_zeros((self.batch_size - n, *batch.shape[1:]))])
            try:
                # The C++ toolchain's probe warns that a CPU-only machine has no CUDA: noise to a CPU user.
                with quieted("torch.utils.cpp_extension"):
                    z, f = self._graph(batch)
            except torch._dynamo.exc.BackendCompilerFailed as exc:
                raise CompileError(f"compiling the model failed (TorchInductor needs a C++ compiler such as "
                                   f"gcc; run without --compile): {first_line(exc)}") from None
            logits.append(z[:n].float())
            features.append(f[:n].float())
        if not logits:
            return np.zeros((0, 1), np.float32), np.zeros((0, self.feature_width), np.float32)
        return torch.cat(logits).numpy(), torch.cat(features).numpy()

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.outputs(images)[0]
