"""Understand the data before training: image sizes and colour modes, counts per
class and split, class imbalance, duplicates, and a PNG grid of sample images per class."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medcls.core.figures import save_png, subplots
from medcls.core.io import atomic_write_json
from medcls.data.audit import audit_index
from medcls.data.datasets import DatasetIndex, load_index
from medcls.data.images import ImageLoadError, load_image


def _header(path: Path) -> tuple[tuple[int, int], str] | None:
    try:
        with Image.open(path) as img:  # reads the header only
            return img.size, img.mode
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _stats(values: list[int]) -> dict:
    a = np.asarray(values)
    return {"min": int(a.min()), "median": float(np.median(a)), "max": int(a.max())} if len(a) else {}


def describe(index: DatasetIndex) -> dict:
    """Sizes, modes, counts and imbalance of a scanned data set (headers only, fast)."""
    widths, heights, modes, unreadable = [], [], Counter(), []
    for s in index.samples:
        head = _header(s.path)
        if head is None:
            unreadable.append(str(s.path))
            continue
        (w, h), mode = head
        widths.append(w)
        heights.append(h)
        modes[mode] += 1
    counts = index.counts()
    imbalance = {split: (max(c.values()) / max(1, min(c.values()))) for split, c in counts.items()}
    return {
        "dataset": index.name, "root": str(index.root), "classes": index.classes, "images": len(index.samples),
        "counts": counts, "imbalance_ratio": {k: round(v, 3) for k, v in imbalance.items()},
        "width": _stats(widths), "height": _stats(heights), "distinct_sizes": len(set(zip(widths, heights))),
        "modes": dict(modes), "unreadable_headers": unreadable, "ignored_files": [str(p) for p in index.ignored],
        "groups": len({s.group for s in index.samples}),
    }


def sample_grid(index: DatasetIndex, path: Path, per_class: int = 6, size: int = 160, seed: int = 0) -> Path:
    """A PNG with ``per_class`` random images of each class, one row per class."""
    rng = np.random.default_rng(seed)
    k = index.num_classes
    fig, axes = subplots(k, per_class, figsize=(1.6 * per_class, 1.75 * k), squeeze=False)
    for label, cls in enumerate(index.classes):
        members = [s for s in index.samples if s.label == label]
        picks = rng.choice(len(members), min(per_class, len(members)), replace=False)
        for j, ax in enumerate(axes[label]):
            ax.axis("off")
            if j >= len(picks):
                continue
            s = members[picks[j]]
            try:
                img = load_image(s.path, index.color_mode, size)
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
            except ImageLoadError:
                ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
            ax.set_title(s.path.name[:18], fontsize=6)
        axes[label][0].text(-0.1, 0.5, cls, transform=axes[label][0].transAxes, ha="right", va="center",
                            fontsize=9, rotation=90)
    return save_png(fig, path, dpi=100)


def inspect_data(root: str | Path, dataset: str | None = None, out_dir: str | Path | None = None,
                 quiet: bool = False, audit: bool | None = None) -> dict:
    """Describe a data set; with ``out_dir`` write ``inspection.json`` and ``samples.png`` there.

    ``audit`` adds the duplicate audit's summary (cached after the first run); None: the
    data set's default. ``quiet``: no progress bars."""
    index = load_index(dataset, root)
    info = describe(index)
    if index.audit if audit is None else audit:
        info["audit"] = audit_index(index, quiet=quiet).summary.to_dict()
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        info["sample_grid"] = str(sample_grid(index, out / "samples.png"))
        atomic_write_json(out / "inspection.json", info)
    return info
