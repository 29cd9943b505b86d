"""Image transforms on float batches ``(N, C, H, W)`` in [0, 1], one parameter per image:
the primitives that training augmentation draws at random (:mod:`medcls.data.augment`)
and that the stress test applies at fixed strengths (:mod:`medcls.stress`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def warp(x: torch.Tensor, scale_x: torch.Tensor, scale_y: torch.Tensor, angle: torch.Tensor,
         shift_x: torch.Tensor, shift_y: torch.Tensor) -> torch.Tensor:
    """Affine resampling, zeros outside: each output pixel reads the input at the rotated
    (``angle``, radians) and scaled point; a scale below 1 zooms in (0.7: the central 70% of
    the side fills the frame), above 1 zooms out; shifts are fractions of the side."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid works in [-1, 1] coordinates: a shift of f of the side is 2f.
    theta = torch.stack([torch.stack([cos * scale_x, -sin * scale_y, 2 * shift_x], 1),
                         torch.stack([sin * scale_x, cos * scale_y, 2 * shift_y], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def gamma(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``x ** g`` per image (g > 1 darkens the mid-tones, g < 1 brightens them)."""
    return x.clamp(0, 1).pow(g.to(x.dtype)[:, None, None, None])


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Distances from each image's mean intensity scaled by ``factor``."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * factor.to(x.dtype)[:, None, None, None] + mean


def border(x: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """A black band of ``width`` (fraction of the side) along every edge of each image."""
    h, w = x.shape[-2:]
    ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) / h
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) / w
    b = width.to(x.dtype)[:, None, None]
    inside = ((ys[None, :, None] > b) & (ys[None, :, None] < 1 - b)
              & (xs[None, None, :] > b) & (xs[None, None, :] < 1 - b))
    return x * inside[:, None].to(x.dtype)


def fill_boxes(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor,
               width: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """One rectangle per image (corner and size as fractions of the side; height 0: none)
    filled with ``value`` (a cut-out, or a burned-in marker's patch)."""
    h, w = x.shape[-2:]
    ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) / h
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) / w
    t, lft = top.to(x.dtype)[:, None, None], left.to(x.dtype)[:, None, None]
    box = ((ys[None, :, None] >= t) & (ys[None, :, None] < t + height.to(x.dtype)[:, None, None])
           & (xs[None, None, :] >= lft) & (xs[None, None, :] < lft + width.to(x.dtype)[:, None, None]))[:, None]
    return torch.where(box, value.to(x.dtype)[:, None, None, None], x)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, ``sigma`` in pixels (edges replicated)."""
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
