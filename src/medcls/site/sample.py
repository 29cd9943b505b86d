"""A site's own images, read at the model's size and colour mode: a labelled sample in class
folders (``ROOT/CLASS/*``, the model's class names) or any folder of unlabelled images, with
the SHA-256 of what was read (the provenance a fit records) and patient-grouped folds."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from medcls.config import config_from_dict
from medcls.core.paths import default_cache_dir
from medcls.data.cache import build_cache
from medcls.data.datasets import DataError, load_index
from medcls.data.fingerprint import file_sha256
from medcls.data.images import expand_paths
from medcls.models.checkpoint import ModelInfo

log = logging.getLogger(__name__)

# A sensitivity or specificity near 0.9 measured on n images of a class has a 95% interval of
# about +-1.96 sqrt(0.09 / n): +-0.13 at n = 20, +-0.08 at n = 50. Below 20 per class the refitted
# threshold is noise (it moves by more than the site shift it is meant to correct): refused.
# Below 50 it is allowed with a warning (the intervals reported are wide).
MIN_PER_CLASS = 20
WARN_PER_CLASS = 50


class SiteError(ValueError):
    """A site's data cannot be used for the fit asked for; the message says why."""


@dataclass
class SiteImages:
    """Readable images of a site folder, in a fixed order."""

    root: Path
    paths: list[Path]
    images: np.ndarray  # (N, H, W, C) uint8 at the model's size and colour mode
    labels: np.ndarray | None  # (N,) class indices; None: unlabelled
    groups: list[str]  # patient (or image) of each
    sha256: str  # over the sorted (relative path[, label], file SHA-256) of the images used
    skipped: dict[str, str]  # unreadable file -> reason

    def counts(self, classes: list[str]) -> dict[str, int]:
        """Images per class (a labelled sample)."""
        assert self.labels is not None
        return {c: int((self.labels == k).sum()) for k, c in enumerate(classes)}


def _digest(root: Path, paths: list[Path], labels: np.ndarray | None) -> str:
    h = hashlib.sha256()
    rows = sorted(zip(paths, labels if labels is not None else [None] * len(paths)), key=lambda r: r[0])
    for path, label in rows:
        tag = "" if label is None else f"\t{int(label)}"
        h.update(f"{path.relative_to(root).as_posix()}{tag}\t{file_sha256(path)}\n".encode())
    return h.hexdigest()


def _read(root: Path, paths: list[Path], info: ModelInfo, labels: np.ndarray | None, groups: list[str],
          quiet: bool) -> SiteImages:
    # This machine's cache, not the one the training machine recorded in the model's config.
    cache = build_cache(paths, info.image_size, info.color_mode, default_cache_dir(), quiet=quiet)
    if cache.errors:
        log.warning("skipped %d unreadable image(s) in %s: %s", len(cache.errors), root,
                    "; ".join(f"{p}: {r}" for p, r in list(cache.errors.items())[:5]))
    ok = np.flatnonzero(cache.ok)
    kept = [paths[i] for i in ok]
    labels = labels[ok] if labels is not None else None
    return SiteImages(root, kept, np.asarray(cache.images[ok]), labels, [groups[i] for i in ok],
                      _digest(root, kept, labels), dict(cache.errors))


def labelled_sample(root: str | Path, info: ModelInfo, quiet: bool = False) -> SiteImages:
    """A site's labelled sample: class folders named as the model's classes, grouped by patient
    where the model's data set knows how (its registered data set reads the folder)."""
    root = Path(root)
    dataset = config_from_dict(info.config).data.dataset
    try:
        index = load_index(dataset, root)
    except DataError as exc:
        raise SiteError(f"{root}: {exc} (a labelled sample is one folder per class: {', '.join(info.classes)})") \
            from None
    if index.classes != info.classes:
        raise SiteError(f"{root} has classes {index.classes}, the model predicts {info.classes}")
    labels = np.array([s.label for s in index.samples], np.int64)
    return _read(root, [s.path for s in index.samples], info, labels, [s.group for s in index.samples], quiet)


def unlabelled_images(root: str | Path, info: ModelInfo, quiet: bool = False) -> SiteImages:
    """Every image file under ``root`` (searched recursively; labels, if any folders say them, unused)."""
    root = Path(root)
    if not root.is_dir():
        raise SiteError(f"site image folder not found: {root}")
    paths = expand_paths([root])
    if not paths:
        raise SiteError(f"no image files in {root}")
    return _read(root, paths, info, None, [p.stem for p in paths], quiet)


def check_class_counts(counts: dict[str, int], minimum: int = MIN_PER_CLASS, warn: int = WARN_PER_CLASS) -> None:
    """Refuse a sample with fewer than ``minimum`` images of a class; warn below ``warn``."""
    low = {c: n for c, n in counts.items() if n < minimum}
    if low:
        raise SiteError(f"too few labelled images to refit the operating point: {low} (at least {minimum} per class; "
                        f"with fewer, a sensitivity's 95% interval is wider than +-0.13)")
    thin = {c: n for c, n in counts.items() if n < warn}
    if thin:
        log.warning("few labelled images for %s (under %d per class): the refitted threshold is uncertain; "
                    "read its bootstrap intervals", thin, warn)


def group_folds(labels: np.ndarray, groups: list[str], k: int = 5, seed: int = 0) -> list[np.ndarray]:
    """``k`` disjoint folds of indices, whole patients in one fold, class shares kept."""
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [held for _, held in splitter.split(np.zeros(len(labels)), labels, groups)]
