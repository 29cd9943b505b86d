"""Batched tensor augmentation: one random affine (rotation, shift, zoom, and optionally
a random resized crop with aspect jitter), flip, brightness/contrast/gamma, border
masking and a cut-out per image, for a whole batch at once (on CPU or GPU).
Active only in training mode; evaluation sees the images untouched."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from medcls.data import transforms
from medcls.data.prepared import to_model_input

if TYPE_CHECKING:
    from medcls.config import AugmentConfig


BORDER_MAX = 0.15  # widest masked border band, fraction of the side


class BatchAugment(nn.Module):
    def __init__(self, cfg: AugmentConfig):
        super().__init__()
        self.cfg = cfg

    def _uniform(self, n: int, span: float, like: torch.Tensor) -> torch.Tensor:
        return (torch.rand(n, device=like.device, dtype=like.dtype) * 2 - 1) * span

    def _crops(self, n: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Random resized crops: area share in [crop_scale, 1], log-aspect within
        +/-log(1 + crop_aspect), placed anywhere inside the image; (width, height, centre x,
        centre y) as fractions of the side, the centre relative to the image's."""
        cfg = self.cfg
        area = cfg.crop_scale + (1 - cfg.crop_scale) * torch.rand(n, device=like.device, dtype=like.dtype)
        aspect = torch.exp(self._uniform(n, math.log1p(cfg.crop_aspect), like))
        width, height = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
        return width, height, self._uniform(n, 1, like) * (1 - width) / 2, self._uniform(n, 1, like) * (1 - height) / 2

    def _erase(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """With probability ``erase``, one black or white rectangle (5-20% of each side) per image:
        a stand-in for burned-in letters, markers and labels the model must not read."""
        hit = torch.rand(n, device=x.device) < self.cfg.erase
        height, width = 0.05 + 0.15 * torch.rand(2, n, device=x.device, dtype=x.dtype)
        height = height * hit
        top, left = torch.rand(n, device=x.device) * (1 - height), torch.rand(n, device=x.device) * (1 - width)
        value = (torch.rand(n, device=x.device) < 0.5).to(x.dtype)
        return transforms.fill_boxes(x, top, left, height, width, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: float ``(N, C, H, W)`` in [0, 1]."""
        cfg = self.cfg
        if not self.training or not cfg.enabled:
            return x
        n = x.shape[0]
        cropping = cfg.crop_scale < 1 or cfg.crop_aspect > 0
        if cfg.rotation or cfg.shift or cfg.zoom or cropping:
            angle = self._uniform(n, cfg.rotation * math.pi / 180, x)
            scale = 1 + self._uniform(n, cfg.zoom, x)
            shift_x, shift_y = self._uniform(n, cfg.shift, x), self._uniform(n, cfg.shift, x)
            crop_w = crop_h = torch.ones_like(scale)
            if cropping:
                crop_w, crop_h, centre_x, centre_y = self._crops(n, x)
                shift_x, shift_y = shift_x + centre_x, shift_y + centre_y
            x = transforms.warp(x, crop_w / scale, crop_h / scale, angle, shift_x, shift_y)
        if cfg.hflip:
            flip = torch.rand(n, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if cfg.contrast:
            x = transforms.contrast(x, 1 + self._uniform(n, cfg.contrast, x))
        if cfg.brightness:
            x = x + self._uniform(n, cfg.brightness, x)[:, None, None, None]
        if cfg.gamma:
            x = transforms.gamma(x, torch.exp2(self._uniform(n, cfg.gamma, x)))
        if cfg.border:
            hit = torch.rand(n, device=x.device) < cfg.border
            x = transforms.border(x, torch.rand(n, device=x.device) * BORDER_MAX * hit)
        if cfg.erase:
            x = self._erase(x, n)
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
