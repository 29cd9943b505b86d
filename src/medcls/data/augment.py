"""Batched tensor augmentation: one random affine (rotation, shift, zoom), flip and
brightness/contrast per image, for a whole batch at once (on CPU or GPU).
Active only in training mode; evaluation sees the images untouched."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcls.data.prepared import to_model_input

if TYPE_CHECKING:
    from medcls.config import AugmentConfig


class BatchAugment(nn.Module):
    def __init__(self, cfg: AugmentConfig):
        super().__init__()
        self.cfg = cfg

    def _uniform(self, n: int, span: float, like: torch.Tensor) -> torch.Tensor:
        return (torch.rand(n, device=like.device, dtype=like.dtype) * 2 - 1) * span

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: float ``(N, C, H, W)`` in [0, 1]."""
        cfg = self.cfg
        if not self.training or not cfg.enabled:
            return x
        n = x.shape[0]
        if cfg.rotation or cfg.shift or cfg.zoom:
            angle = self._uniform(n, cfg.rotation * math.pi / 180, x)
            scale = 1 + self._uniform(n, cfg.zoom, x)
            cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
            # affine_grid works in [-1, 1] coordinates: a shift of f of the side is 2f.
            tx, ty = self._uniform(n, 2 * cfg.shift, x), self._uniform(n, 2 * cfg.shift, x)
            theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if cfg.hflip:
            flip = torch.rand(n, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if cfg.contrast:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * (1 + self._uniform(n, cfg.contrast, x))[:, None, None, None] + mean
        if cfg.brightness:
            x = x + self._uniform(n, cfg.brightness, x)[:, None, None, None]
        return x.clamp(0, 1)


@torch.no_grad()
def augmented_copies(images: np.ndarray, cfg: AugmentConfig, seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """One randomly augmented copy of each uint8 image ``(N, H, W, C)``, drawn as training draws
    them (seeded, so the same images give the same copies)."""
    augment = BatchAugment(cfg).train()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        out = np.empty_like(images)
        for start in range(0, len(images), batch_size):
            x = to_model_input(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])))
            y = augment(x).mul_(255).round_().to(torch.uint8)
            out[start:start + len(x)] = y.permute(0, 2, 3, 1).numpy()
        return out
    finally:
        torch.random.set_rng_state(generator_state)  # the caller's random stream goes on untouched
