"""The perturbations a new site plausibly brings, each one decorated function with its
strengths: ``fn(images, strength, rng)`` takes uint8 ``(N, H, W, C)`` images at the model's
size and returns perturbed ones of the same shape and dtype; strength 0 is the identity.

Adding a perturbation is one decorated function::

    @perturbation("invert", strengths=(0, 1), unit="share inverted")
    def invert(images, strength, rng): ...
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from medcls.core.registry import Registry
from medcls.data import transforms

PerturbFn = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Perturbation:
    """A registered perturbation: its function, the strengths the stress test replays
    (0 among them: the identity) and what a strength means (the plot's axis)."""

    name: str
    fn: PerturbFn
    strengths: tuple[float, ...]
    unit: str

    def __call__(self, images: np.ndarray, strength: float, seed: int = 0) -> np.ndarray:
        """``images`` perturbed at ``strength``; random parts drawn from ``seed``."""
        return self.fn(images, float(strength), np.random.default_rng(seed))


PERTURBATIONS: Registry[Perturbation] = Registry("perturbation")
_ORDER: list[str] = []  # registration order: the order of tables and plots


def perturbation(name: str, strengths: tuple[float, ...], unit: str) -> Callable[[PerturbFn], PerturbFn]:
    """Register ``fn`` under ``name`` with the strengths the stress test replays."""
    if 0 not in strengths:
        raise ValueError(f"perturbation '{name}': strength 0 (the identity) must be among {strengths}")

    def deco(fn: PerturbFn) -> PerturbFn:
        PERTURBATIONS.register(name)(Perturbation(name, fn, tuple(sorted(strengths)), unit))
        _ORDER.append(name)
        return fn

    return deco


def all_perturbations() -> list[Perturbation]:
    """Every registered perturbation, in registration order."""
    return [PERTURBATIONS.get(name) for name in _ORDER]


CHUNK = 128  # images per float batch: bounds the memory of a 224 px replay


def on_tensors(images: np.ndarray, fn: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """Apply ``fn`` to float ``(N, C, H, W)`` batches in [0, 1]; back to uint8 ``(N, H, W, C)``."""
    out = np.empty_like(images)
    with torch.no_grad():
        for start in range(0, len(images), CHUNK):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + CHUNK])).permute(0, 3, 1, 2).float() / 255
            y = fn(x).clamp(0, 1).mul(255).round().to(torch.uint8)
            out[start:start + len(x)] = y.permute(0, 2, 3, 1).numpy()
    return out


def _warp(images: np.ndarray, scale_x: float = 1.0, scale_y: float = 1.0, angle: float = 0.0,
          shift_x: float = 0.0) -> np.ndarray:
    """:func:`~medcls.data.transforms.warp` with the same parameters for every image."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        values = torch.tensor([scale_x, scale_y, angle, shift_x, 0.0]).repeat(len(x), 1).T
        return transforms.warp(x, *values)

    return on_tensors(images, fn)


def _per_image(images: np.ndarray, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               value: float) -> np.ndarray:
    """``fn(x, values)`` with one value, the same for every image."""
    return on_tensors(images, lambda x: fn(x, torch.full((len(x),), value)))


@perturbation("zoom_in", (0, 0.1, 0.2, 0.3, 0.4), "share of the side cropped away (0.3: a centred 70% crop)")
def zoom_in(images, strength, rng):
    """A tighter collimation: the centre ``1 - strength`` of each side, resized back to the frame."""
    return _warp(images, 1 - strength, 1 - strength)


@perturbation("zoom_out", (0, 0.1, 0.2, 0.3), "share of the side padded (black) around the shrunken image")
def zoom_out(images, strength, rng):
    """A wider field of view: the image shrunk to ``1 - strength`` of the side, black around it."""
    return _warp(images, 1 / (1 - strength), 1 / (1 - strength))


@perturbation("aspect", (0, 0.1, 0.2, 0.3), "relative horizontal stretch (centre kept)")
def aspect(images, strength, rng):
    """An original of another aspect ratio, squashed to the square input: widths stretched by ``1 + strength``."""
    return _warp(images, scale_x=1 / (1 + strength))


@perturbation("rotation", (0, 5, 10, 15, 20), "degrees")
def rotation(images, strength, rng):
    return _warp(images, angle=math.radians(strength))


@perturbation("translation", (0, 0.05, 0.1, 0.15), "share of the side shifted right")
def translation(images, strength, rng):
    return _warp(images, shift_x=-strength)


@perturbation("gamma", (-0.6, -0.3, 0, 0.3, 0.6), "log2 of the gamma (positive: darker mid-tones)")
def gamma(images, strength, rng):
    return _per_image(images, transforms.gamma, 2.0 ** strength)


@perturbation("exposure", (-0.3, -0.15, 0, 0.15, 0.3), "relative change of every intensity")
def exposure(images, strength, rng):
    return on_tensors(images, lambda x: x * (1 + strength))


@perturbation("contrast", (-0.4, -0.2, 0, 0.2, 0.4), "relative change of the distance from the mean")
def contrast(images, strength, rng):
    return _per_image(images, transforms.contrast, 1 + strength)


@perturbation("blur", (0, 0.5, 1, 2), "Gaussian sigma, % of the side")
def blur(images, strength, rng):
    if strength == 0:
        return images.copy()
    return on_tensors(images, lambda x: transforms.gaussian_blur(x, strength / 100 * x.shape[-1]))


@perturbation("sharpen", (0, 0.5, 1, 2), "unsharp-mask amount (sigma 1% of the side)")
def sharpen(images, strength, rng):
    return on_tensors(images, lambda x: x + strength * (x - transforms.gaussian_blur(x, 0.01 * x.shape[-1])))


@perturbation("noise", (0, 0.02, 0.04, 0.08), "standard deviation of Gaussian noise, on [0, 1] intensities")
def noise(images, strength, rng):
    added = rng.normal(0, strength * 255, images.shape) if strength else 0
    return np.clip(np.round(images + added), 0, 255).astype(np.uint8)


@perturbation("jpeg", (0, 0.5, 0.8, 0.9), "1 - JPEG quality / 100 (0.9: quality 10)")
def jpeg(images, strength, rng):
    if strength == 0:
        return images.copy()
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(
            buf, format="JPEG", quality=max(1, round(100 * (1 - strength))))
        decoded = np.asarray(Image.open(buf))
        out[i] = decoded.reshape(image.shape)
    return out


@perturbation("border", (0, 0.05, 0.1, 0.15), "width of the black band on every edge, share of the side")
def border(images, strength, rng):
    return _per_image(images, transforms.border, strength)


MARKER_TEXT = ("R", "L", "AP", "PA", "PORTABLE", "SUPINE")


@perturbation("markers", (0, 0.06, 0.1, 0.14), "letter height, share of the side")
def markers(images, strength, rng):
    """Burned-in white letters (a laterality marker in a random corner and a label along the
    top), as sites stamp them; positions and words drawn from ``rng``."""
    if strength == 0:
        return images.copy()
    out = np.empty_like(images)
    side = images.shape[1]
    font = ImageFont.load_default(size=max(6, round(strength * side)))
    margin = round(0.04 * side)
    for i, image in enumerate(images):
        picture = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
        draw = ImageDraw.Draw(picture)
        white = 255 if picture.mode == "L" else (255, 255, 255)
        corner = rng.integers(4)
        x = margin if corner % 2 == 0 else side - margin - round(strength * side)
        y = margin if corner < 2 else side - margin - round(strength * side)
        draw.text((x, y), MARKER_TEXT[rng.integers(2)], fill=white, font=font)
        draw.text((side // 3, margin), MARKER_TEXT[2 + rng.integers(len(MARKER_TEXT) - 2)], fill=white, font=font)
        out[i] = np.asarray(picture).reshape(image.shape)
    return out
