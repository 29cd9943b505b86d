"""From a data config to ready-to-batch arrays: scan -> duplicate audit -> split ->
decode cache -> batches of uint8 images straight from the memory-mapped cache."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from medcls.core.paths import default_data_root
from medcls.data.audit import audit_index, deduplicate
from medcls.data.cache import ImageCache, build_cache
from medcls.data.datasets import SPLITS, DataError, DatasetIndex, load_index
from medcls.data.split import Splits, limit_per_class, make_split, read_manifest

if TYPE_CHECKING:
    from medcls.config import DataConfig

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    index: DatasetIndex
    splits: Splits  # the split as written to the manifest (unreadable files included)
    color_mode: str
    image_size: int
    cache: ImageCache
    rows: dict[str, np.ndarray]  # split -> cache rows of readable images
    labels: dict[str, np.ndarray]  # split -> labels of those rows
    audit: dict | None = None  # what the duplicate audit changed in the split (None: not audited here)

    @property
    def classes(self) -> list[str]:
        return self.index.classes

    @property
    def channels(self) -> int:
        return self.cache.images.shape[-1]

    def paths(self, split: str) -> list[Path]:
        """Paths of the readable images of ``split``, in row order."""
        ordered = [s.path for name in SPLITS for s in self.splits[name]]
        return [ordered[r] for r in self.rows[split]]

    def images(self, split: str) -> np.ndarray:
        return self.cache.images[self.rows[split]]

    def channel_stats(self, max_images: int = 2000) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of training images in [0, 1] (a seeded subsample)."""
        rows = self.rows["train"]
        if len(rows) > max_images:
            rows = np.sort(np.random.default_rng(0).choice(rows, max_images, replace=False))
        x = self.cache.images[rows].astype(np.float32) / 255.0
        mean = x.mean(axis=(0, 1, 2))
        std = x.std(axis=(0, 1, 2)) + 1e-6
        return mean.tolist(), std.tolist()


def require_data_root(cfg: DataConfig) -> Path:
    """The configured data folder; if it is missing, a :class:`DataError` that says how to give one
    (a preset's or the default root is relative to the working folder, so it is missing elsewhere)."""
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        env = ", or set MEDCLS_DATA" if cfg.root == default_data_root() else ""  # it only changes the default
        raise DataError(f"data folder not found: {cfg.root} (config key data.root; give the folder with "
                        f"--data DIR or --set data.root=DIR{env})")
    return root


def prepare_data(cfg: DataConfig, manifest: str | Path | None = None, quiet: bool = False) -> PreparedData:
    """Scan the data set, split it (or read ``manifest``), and decode it into the cache
    (``quiet``: no progress bars; warnings go to :mod:`logging`)."""
    index = load_index(cfg.dataset, require_data_root(cfg))
    if index.ignored:
        shown = ", ".join(str(p) for p in index.ignored[:5])
        log.warning("ignored %d non-image file(s): %s%s", len(index.ignored), shown,
                    " ..." if len(index.ignored) > 5 else "")
    manifest = manifest or cfg.manifest
    audit = None
    if manifest:
        splits = read_manifest(manifest, index)
    else:
        held: frozenset[str] = frozenset()
        if index.audit if cfg.audit is None else cfg.audit:
            index, held, audit = deduplicate(index, audit_index(index, cfg.cache_dir, cfg.workers, quiet),
                                             cfg.exclude_conflicts)
        splits = make_split(index, cfg.val_fraction, cfg.test_fraction, cfg.split_seed, held)
        splits = limit_per_class(splits, cfg.limit_per_class, cfg.split_seed)
    color_mode = cfg.color_mode or index.color_mode
    ordered = [s for name in SPLITS for s in splits[name]]
    cache = build_cache([s.path for s in ordered], cfg.image_size, color_mode, cfg.cache_dir, cfg.workers, quiet)
    if cache.errors:
        shown = "; ".join(f"{path}: {reason}" for path, reason in list(cache.errors.items())[:20])
        log.warning("skipped %d unreadable image(s): %s", len(cache.errors), shown)
    rows, labels, start = {}, {}, 0
    for name in SPLITS:
        n = len(splits[name])
        idx = np.arange(start, start + n)
        keep = idx[cache.ok[idx]]
        rows[name] = keep
        labels[name] = np.array([s.label for s, ok in zip(splits[name], cache.ok[idx]) if ok], dtype=np.int64)
        start += n
    for name in ("train", "test"):
        present = set(labels[name].tolist())
        missing = [index.classes[k] for k in range(index.num_classes) if k not in present]
        if missing:
            raise DataError(f"the {name} split of {index.root} has no readable images of class(es) {missing}")
    return PreparedData(index, splits, color_mode, cfg.image_size, cache, rows, labels, audit)


class CachedImages(torch.utils.data.Dataset):
    """Rows of the decoded cache; fetched a whole batch at a time (``__getitems__``)."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, labels: np.ndarray):
        self.images, self.rows, self.labels = images, rows, labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]):
        idx = np.asarray(idx)
        return torch.from_numpy(np.ascontiguousarray(self.images[self.rows[idx]])), torch.from_numpy(self.labels[idx])


def _batched(batch):
    # __getitems__ already returns a collated (images, labels) pair.
    return batch


def make_loader(data: PreparedData, split: str, batch_size: int, sampler=None, shuffle: bool = False,
                seed: int = 0) -> torch.utils.data.DataLoader:
    """A loader yielding ``(uint8 NHWC images, int64 labels)`` batches."""
    dataset = CachedImages(data.cache.images, data.rows[split], data.labels[split])
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                                       sampler=sampler, collate_fn=_batched, generator=generator)


def to_model_input(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 ``(N, H, W, C)`` -> float ``(N, C, H, W)`` in [0, 1], the model's input."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
