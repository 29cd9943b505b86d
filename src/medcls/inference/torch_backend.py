"""A PyTorch network as a :class:`~medcls.inference.backend.Backend` (eager, float32)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from medcls.models.inference import batch_logits
from medcls.ood.features import OODFeatures, logits_and_features


class TorchBackend:
    """Runs a PyTorch network on uint8 images, in batches; the OOD feature taps go on at the
    first :meth:`outputs` call (a model without a detector never pays for them)."""

    name = "pytorch"
    parallel_runs = 1  # one run spreads over all cores

    def __init__(self, net: torch.nn.Module, image_size: int, channels: int, batch_size: int = 32,
                 tta: bool = False, grid: int = 1):
        self.net, self.batch_size, self.tta = net.eval(), batch_size, tta
        self.image_size, self.channels, self.grid = image_size, channels, grid  # grid: the detector's
        self._features: Optional[OODFeatures] = None

    @property
    def feature_width(self) -> int:
        return sum(self._taps().blocks)

    def _taps(self) -> OODFeatures:
        if self._features is None:
            self._features = OODFeatures(self.net, self.image_size, self.channels, grid=self.grid)
        return self._features

    def logits(self, images: np.ndarray) -> np.ndarray:
        return batch_logits(self.net, images, self.batch_size, tta=self.tta)

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # One pass gives both; with TTA the logits are the averaged ones (as in the ONNX graph).
        return logits_and_features(self._taps(), images, self.batch_size, tta=self.tta)
