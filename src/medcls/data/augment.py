"""Batched tensor augmentation: one random affine (rotation, shift, zoom), flip and
brightness/contrast per image, for a whole batch at once (on CPU or GPU).
Active only in training mode; evaluation sees the images untouched."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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
