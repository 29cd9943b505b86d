"""Foreign images for checking an out-of-distribution flag: synthetic pictures
(noise, flat, gradients, rendered text) and transformed copies of real images
(heavily rotated, inverted, cropped to a corner). Seeded, so every check sees
the same inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

WORDS = ("patient report discharge summary dose daily chest radiograph findings impression normal "
         "history clinic name date signature page follow up referral laboratory results").split()


def noise_image(rng: np.random.Generator, size: int) -> Image.Image:
    """Uniform or Gaussian pixel noise, grey or colour."""
    shape = (size, size) if rng.random() < 0.5 else (size, size, 3)
    if rng.random() < 0.5:
        arr = rng.integers(0, 256, shape)
    else:
        arr = rng.normal(rng.uniform(60, 200), rng.uniform(10, 80), shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def flat_image(rng: np.random.Generator, size: int) -> Image.Image:
    """One colour everywhere (black, white, or anything between)."""
    return Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))


def gradient_image(rng: np.random.Generator, size: int) -> Image.Image:
    """A linear ramp at a random angle, or a radial one, between two random grey levels."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    if rng.random() < 0.3:
        t = np.hypot(x - rng.random(), y - rng.random())
    else:
        angle = rng.uniform(0, 2 * np.pi)
        t = x * np.cos(angle) + y * np.sin(angle)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-9)
    lo, hi = rng.integers(0, 256, 2)
    return Image.fromarray((lo + (int(hi) - int(lo)) * t).astype(np.uint8))


def text_image(rng: np.random.Generator, size: int) -> Image.Image:
    """Lines of words rendered on a page, like a scanned document (dark on light or the reverse)."""
    paper, ink = (int(rng.integers(200, 256)), int(rng.integers(0, 60)))
    if rng.random() < 0.3:
        paper, ink = ink, paper
    img = Image.new("L", (size, size), paper)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(8, int(size * rng.uniform(0.04, 0.08))))
    step = max(10, int(size * rng.uniform(0.06, 0.1)))
    for top in range(int(size * 0.05), size - step, step):
        draw.text((int(size * 0.05), top), " ".join(rng.choice(WORDS, 6)), fill=ink, font=font)
    return img


SYNTHETIC: dict[str, Callable[[np.random.Generator, int], Image.Image]] = {
    "noise": noise_image, "flat": flat_image, "gradient": gradient_image, "text": text_image,
}


def synthetic_images(kind: str, n: int, size: int = 256, seed: int = 0) -> list[Image.Image]:
    """``n`` synthetic images of one kind (see :data:`SYNTHETIC`)."""
    rng = np.random.default_rng(seed)
    return [SYNTHETIC[kind](rng, size) for _ in range(n)]


def rotate(img: Image.Image) -> Image.Image:
    return img.rotate(90, expand=True)


def upside_down(img: Image.Image) -> Image.Image:
    return img.rotate(180)


def invert(img: Image.Image) -> Image.Image:
    return ImageOps.invert(img.convert("RGB"))


def corner(img: Image.Image) -> Image.Image:
    """The top-left ninth (a third of each side), blown up to full size by the model's resize."""
    return img.crop((0, 0, img.width // 3, img.height // 3))


TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "rotated-90": rotate, "rotated-180": upside_down, "inverted": invert, "corner-crop": corner,
}


def transformed_images(kind: str, paths: Iterable[str | Path]) -> list[Image.Image]:
    """Each image of ``paths`` transformed by one of :data:`TRANSFORMS`."""
    out = []
    for p in paths:
        with Image.open(p) as img:
            out.append(TRANSFORMS[kind](img.convert("RGB")))
    return out


def write_images(images: Sequence[Image.Image], folder: str | Path, prefix: str = "img") -> Path:
    """Save images as PNG files in ``folder`` (for commands that take folders)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        img.save(folder / f"{prefix}-{i:04d}.png")
    return folder
