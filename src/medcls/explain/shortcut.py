"""The shortcut check: how much of the Grad-CAM energy falls outside the region
where the evidence should be (the lung field of a chest X-ray, the disc of a
fundus photograph). A model that reads laterality markers, text or image borders
puts its energy outside; a uniform map puts there the region's outside area."""

from __future__ import annotations

import numpy as np

# The region is drawn on the model's (square-resized) input, relative to its sides.
REGIONS = {
    "box": "central box (10% margin on every side): the lung field; markers and text lie outside",
    "ellipse": "inscribed ellipse: the fundus disc; the background corners lie outside",
}
BOX_MARGIN = 0.10
# Flagged when more than this share of the maps put most of their energy outside:
# a diffuse map is uninformative, a map drawn to a marker or border is a shortcut.
FLAG_SHARE = 0.10


def default_region(dataset: str) -> str:
    """Fundus photographs are discs; X-rays and other data get the central box."""
    return "ellipse" if dataset == "retinopathy" else "box"


def region_mask(height: int, width: int, region: str) -> np.ndarray:
    """Boolean ``(height, width)`` mask, True inside ``region``."""
    if region not in REGIONS:
        raise ValueError(f"unknown region '{region}' (available: {', '.join(REGIONS)})")
    y = (np.arange(height) + 0.5) / height
    x = (np.arange(width) + 0.5) / width
    if region == "box":
        inside_y = (y >= BOX_MARGIN) & (y <= 1 - BOX_MARGIN)
        inside_x = (x >= BOX_MARGIN) & (x <= 1 - BOX_MARGIN)
        return inside_y[:, None] & inside_x[None, :]
    return ((y[:, None] - 0.5) ** 2 + (x[None, :] - 0.5) ** 2) <= 0.25


def outside_fraction(cams: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per map ``(N, H, W)``: share of its total energy outside ``mask``; NaN for an all-zero map."""
    total = cams.sum(axis=(1, 2))
    outside = (cams * ~mask).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, outside / total, np.nan)


def summarize(fractions: np.ndarray, labels: np.ndarray, classes: list[str], mask: np.ndarray,
              region: str) -> dict:
    """The check's numbers: mean and median share outside, against the area outside
    (what a uniform map would give), the share of maps mostly outside (which raises
    the flag above ``FLAG_SHARE``), the mean per true class."""
    ok = ~np.isnan(fractions)
    area = float(1.0 - mask.mean())
    mean = float(fractions[ok].mean()) if ok.any() else float("nan")
    mostly = float((fractions[ok] > 0.5).mean()) if ok.any() else float("nan")
    by_class = {c: float(fractions[ok & (labels == k)].mean()) for k, c in enumerate(classes)
                if (ok & (labels == k)).any()}
    return {
        "region": region, "region_description": REGIONS[region], "images": int(len(fractions)),
        "flat_maps": int((~ok).sum()), "area_outside": round(area, 4), "mean_outside": round(mean, 4),
        "median_outside": round(float(np.median(fractions[ok])), 4) if ok.any() else float("nan"),
        "share_mostly_outside": round(mostly, 4), "by_class": {c: round(v, 4) for c, v in by_class.items()},
        "flag": bool(ok.any() and mostly > FLAG_SHARE),
    }
