"""What runs a model for the :class:`~medcls.inference.predictor.Predictor`: PyTorch
(:mod:`.torch_backend`), TorchInductor-compiled PyTorch (:mod:`.compiled_backend`) or an
exported file on ONNX Runtime (:mod:`.onnx_backend`), behind one small interface."""

from __future__ import annotations

import os
from typing import Optional, Protocol

import numpy as np


class Backend(Protocol):
    """Runs a model on preprocessed uint8 images ``(N, H, W, C)``, in batches of ``batch_size``."""

    name: str  # "pytorch", "pytorch-compiled", "onnxruntime"
    batch_size: int
    parallel_runs: int  # runs that fit side by side on this machine (the service's worker count)
    feature_width: Optional[int]  # width of the OOD features output (None: unknown before a run)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Logits ``(N, outputs)`` (test-time augmented if the model uses it)."""

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and the OOD features ``(N, D)`` of :class:`~medcls.ood.features.OODFeatures`, from one pass."""


def parallel_runs(threads: int | None) -> int:
    """Runs of a backend with ``threads`` threads each that fit side by side on this machine:
    one per core for single-threaded runs, else one (None: a run spreads over all cores itself)."""
    return max(1, (os.cpu_count() or 1) // threads) if threads else 1
