"""A heat-map overlay made readable on its own: the overlay at the image's full size, a
colour bar for the map's scale at the right and a caption band below (method, predicted
class, probability)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pytorch_grad_cam.utils.image import show_cam_on_image


def _ramp(n: int) -> np.ndarray:
    """``n`` colours from the map's top (1) to bottom (0), exactly as the overlay draws them."""
    levels = np.linspace(1.0, 0.0, n, dtype=np.float32)[:, None]
    return show_cam_on_image(np.zeros((n, 1, 3), np.float32), levels, use_rgb=True, image_weight=0.0)[:, 0]


def annotate(overlay: np.ndarray, caption: str) -> np.ndarray:
    """``overlay`` (uint8 RGB, H x W) with a colour bar to its right and ``caption`` below it;
    the overlay's pixels stay as they are in the top-left H x W."""
    h, w = overlay.shape[:2]
    unit = max(14, min(h, w) // 28)  # text and bar scale with the picture
    font = ImageFont.load_default(size=unit)
    bar_w, pad, band = unit, unit // 2, 2 * unit
    label_w = int(font.getlength("high")) + pad
    canvas = Image.new("RGB", (w + 2 * pad + bar_w + label_w, h + band), "white")
    canvas.paste(Image.fromarray(overlay), (0, 0))
    canvas.paste(Image.fromarray(np.repeat(_ramp(h)[:, None], bar_w, axis=1)), (w + pad, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((w + 2 * pad + bar_w, 0), "high", fill="black", font=font)
    draw.text((w + 2 * pad + bar_w, h - unit), "low", fill="black", font=font)
    draw.text((pad, h + unit // 2), caption, fill="black", font=font)
    return np.asarray(canvas)
