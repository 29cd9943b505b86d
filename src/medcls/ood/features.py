"""The features the out-of-distribution detector reads (:mod:`medcls.ood.detector`): the
channel means of the network's last activation at each spatial scale (over the whole image,
or over each cell of a grid), then the penultimate activations, from the same forward pass
as the logits."""

from __future__ import annotations

import copy
import math
from collections import Counter
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
import torch.nn.functional as F

from medcls.core.progress import batch_starts
from medcls.data.augment import augmented_copies
from medcls.data.prepared import to_model_input
from medcls.models.fused import FirstStageWithMeans, fusable_first_stage
from medcls.models.inference import WithFeatures, tta_views

if TYPE_CHECKING:
    from medcls.config import AugmentConfig


@torch.inference_mode()
def scale_ends(net: torch.nn.Module, image_size: int, channels: int) -> list[tuple[torch.nn.Module, int]]:
    """For each spatial scale (octave) of ``net``'s activations, the module whose output is
    computed last at that scale (a whole stage where the network has stage modules), with
    its channel count; found by one probe pass. Scales below 2 px are left to the
    penultimate features."""
    seen: list[tuple[torch.nn.Module, int, int]] = []
    calls: Counter = Counter()

    def record(module, inputs, output):
        calls[module] += 1
        if isinstance(output, torch.Tensor) and output.dim() == 4 and min(output.shape[2:]) >= 2:
            seen.append((module, int(math.log2(min(output.shape[2:]))), int(output.shape[1])))

    handles = [m.register_forward_hook(record) for m in net.modules()]
    try:
        device = next(net.parameters()).device
        net.eval()(torch.zeros(1, channels, image_size, image_size, device=device))
    finally:
        for h in handles:
            h.remove()
    # Later entries win; a module run more than once per pass (a shared ReLU) has no single output.
    last = {octave: (module, c) for module, octave, c in seen if calls[module] == 1}
    return [last[o] for o in sorted(last, reverse=True)]


class OODFeatures(WithFeatures):
    """``(logits, features)``: features are the channel means at each spatial scale, then
    the penultimate activations (block sizes in :attr:`blocks`). Export this wrapper to
    ONNX to score exported models.

    ``grid`` > 1: each scale's block holds the channel means over each cell of a ``grid`` x
    ``grid`` division of the image (channel-major: ``channels * grid**2`` values), which keep
    where in the image a pattern is (a detector's :attr:`~medcls.ood.detector.OODDetector.grid`).

    The taps are forward hooks on ``net``, removed by :meth:`remove_taps` (or on leaving a
    ``with`` block).

    ``fused`` (the compiled backend's choice): where the network begins with a convolution,
    ReLU and max-pool the fused kernel runs (:func:`medcls.models.fused.fusable_first_stage`),
    the wrapper runs a copy of ``net`` whose first stage computes the first scale's
    channel means on the way, so its full-size activation is never stored."""

    def __init__(self, net: torch.nn.Module, image_size: int, channels: int, fused: bool = False, grid: int = 1):
        # The fused first stage hands over whole-image means only.
        backbone = fusable_first_stage(net, image_size) if fused and grid == 1 else None
        if backbone is not None:
            net = copy.deepcopy(net)  # the first stage is swapped below: never in the caller's network
            backbone = fusable_first_stage(net, image_size)
        super().__init__(net)
        taps = scale_ends(net, image_size, channels)
        self.grid = grid
        self.blocks = [c * grid * grid for _, c in taps] + [self._head.in_features]
        self._pooled: Optional[list[torch.Tensor]] = None  # a list only while this wrapper runs
        self._handles += [module.register_forward_hook(self._pool) for module, _ in taps]
        if backbone is not None and taps and taps[0][0] is backbone[1]:  # its ReLU ends the first scale
            backbone[0], backbone[1], backbone[2] = FirstStageWithMeans(backbone[0], self._keep_means), \
                torch.nn.Identity(), torch.nn.Identity()

    def _keep_means(self, means: torch.Tensor) -> None:
        if self._pooled is not None:
            self._pooled.append(means)

    def _pool(self, module, inputs, output):
        # The mean is taken at once: a later in-place activation must not change it.
        out = output.float()
        self._keep_means(out.mean(dim=(2, 3)) if self.grid == 1 else F.adaptive_avg_pool2d(out, self.grid).flatten(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._pooled = []
        try:
            logits, penultimate = super().forward(x)
            return logits, torch.cat([*self._pooled, penultimate.float()], dim=1)
        finally:
            self._pooled = None


@torch.inference_mode()
def logits_and_features(model: WithFeatures, images: np.ndarray, batch_size: int = 64, tta: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(N, outputs)`` and features ``(N, D)`` for uint8 images ``(N, H, W, C)``.

    With ``tta`` the logits are averaged over the test-time views and the features are
    the image's own, from the same passes (as in the exported ONNX graph): the flag
    then costs no extra forward pass."""
    model.eval()
    device = next(model.parameters()).device
    logits, features = [], []
    for start in batch_starts(len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        x = to_model_input(chunk)
        z, f = model(x)
        if tta:
            z = torch.stack([z, *(model.net(v) for v in tta_views(x)[1:])]).mean(0)
        logits.append(z.float().cpu())
        features.append(f.float().cpu())
    if not logits:
        return np.zeros((0, 1), np.float32), np.zeros((0, 0), np.float32)
    return torch.cat(logits).numpy(), torch.cat(features).numpy()


def reference_features(model: OODFeatures, images: np.ndarray, labels: np.ndarray, batch_size: int = 64,
                       augment: Optional[AugmentConfig] = None) -> tuple[np.ndarray, np.ndarray]:
    """Features (and labels) the Gaussians are fitted on: the training images, and with ``augment``
    also an augmented copy of each, so that the variation the network was trained to ignore
    (small rotations, shifts, zooms, brightness and contrast) counts as familiar."""
    features = logits_and_features(model, images, batch_size)[1]
    if augment is None or not augment.enabled:
        return features, labels
    copies = logits_and_features(model, augmented_copies(images, augment), batch_size)[1]
    return np.concatenate([features, copies]), np.concatenate([labels, labels])
