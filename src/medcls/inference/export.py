"""Export a checkpoint to one self-contained ONNX file and prove it computes what
PyTorch computes. The graph includes the uint8 -> float input conversion and
the normalisation, returns the logits and the features the out-of-distribution
detector reads (:class:`~medcls.ood.detector.OODFeatures`: channel means at each
scale, then the penultimate activations), takes any batch size, and carries the model's
:class:`~medcls.models.checkpoint.ModelInfo` as JSON metadata."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medcls.core.io import atomic_path
from medcls.data.prepared import to_model_input
from medcls.inference.onnx_backend import (
    INPUT_NAME,
    OUTPUT_NAMES,
    info_metadata,
    load_onnx,
)
from medcls.models.checkpoint import load_checkpoint
from medcls.models.inference import tta_views
from medcls.ood.detector import OODFeatures, feature_grid

OPSET = 20
# Largest accepted |ONNX - PyTorch| difference, relative to the output's own
# magnitude (floor 1): float32 kernels differ in summation order, not more.
TOLERANCE = 1e-4


class ExportError(ValueError):
    """An export failed or its result does not match PyTorch; the message says which."""


class InferenceGraph(torch.nn.Module):
    """What an exported file (or a compiled model) computes: uint8 ``(N, H, W, C)`` images -> (logits, features)."""

    def __init__(self, net: torch.nn.Module, image_size: int, channels: int, tta: bool = False,
                 fused: bool = False, grid: int = 1):
        super().__init__()
        # fused (compiled backend only: ONNX has no such op) modifies ``net``; grid: the detector's (OODFeatures)
        self.net, self.tta = OODFeatures(net, image_size, channels, fused, grid), tta

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_model_input(image)
        logits, features = self.net(x)
        if self.tta:  # as batch_logits: logits averaged over the views; features of the image itself
            views = tta_views(x)[1:]
            logits = torch.stack([logits, *(self.net(v)[0] for v in views)]).mean(0)
        return logits, features


@dataclass
class ExportResult:
    path: Path
    opset: int
    max_abs_diff_logits: float
    max_abs_diff_features: float


def _max_diff(name: str, got: np.ndarray, want: np.ndarray, tolerance: float) -> float:
    if got.shape != want.shape:
        raise ExportError(f"ONNX {name} have shape {got.shape}, PyTorch {want.shape}")
    diff = float(np.abs(got.astype(np.float64) - want).max())
    limit = tolerance * max(1.0, float(np.abs(want).max()))
    if not diff <= limit:
        raise ExportError(f"ONNX {name} differ from PyTorch by {diff:.3g} (> {limit:.3g}); the export is not faithful")
    return diff


def export_onnx(checkpoint: str | Path, out: str | Path | None = None, opset: int = OPSET,
                tolerance: float = TOLERANCE, verify_batch: int = 5) -> ExportResult:
    """Export ``checkpoint`` (model.pt or run folder) to ONNX at ``out`` (default: beside it, ``.onnx``).

    The written file is reloaded with ONNX Runtime and run on ``verify_batch``
    seeded random images (a batch size other than the traced one, to prove the
    batch axis is dynamic); any output differing from PyTorch by more than
    ``tolerance`` (relative to the output's magnitude) raises :class:`ExportError`
    and leaves no file behind.
    """
    net, info = load_checkpoint(checkpoint)
    path = Path(checkpoint) / "model.pt" if Path(checkpoint).is_dir() else Path(checkpoint)
    out = Path(out) if out is not None else path.with_suffix(".onnx")
    size, c = info.image_size, info.in_channels
    graph = InferenceGraph(net, size, c, info.tta, grid=feature_grid(info)).eval()
    example = torch.zeros((2, size, size, c), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's concern
        program = torch.onnx.export(graph, (example,), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                    dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
                                    opset_version=opset, dynamo=True, verbose=False)
    program.model.metadata_props.update(info_metadata(info))
    images = np.random.default_rng(0).integers(0, 256, (verify_batch, size, size, c), dtype=np.uint8)
    with torch.inference_mode():
        want = [t.numpy().astype(np.float64) for t in graph(torch.from_numpy(images))]
    with atomic_path(out) as tmp:
        program.save(tmp, external_data=False)
        backend, _ = load_onnx(tmp)
        got = backend.outputs(images)
        diffs = [_max_diff(name, g, w, tolerance) for name, g, w in zip(OUTPUT_NAMES, got, want)]
    return ExportResult(out, opset, *diffs)
