"""Decoded-image cache: every image is decoded and resized once into a uint8
``.npy`` file that later epochs and runs memory-map (so a data set larger than
RAM still trains, and DDP workers share the pages read-only).

The cache key covers each file's path, size and modification time, the image
size, the colour mode and the decoder version: change a file and the cache is
rebuilt. Files that cannot be decoded are reported by name and left out.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcls.core.io import atomic_path, atomic_write_json, reserve_space
from medcls.core.progress import task
from medcls.data.images import ImageLoadError, channels, load_image

CACHE_VERSION = 1


@dataclass
class ImageCache:
    images: np.ndarray  # (N, H, W, C) uint8, memory-mapped
    ok: np.ndarray  # (N,) bool: False where the file could not be decoded
    errors: dict[str, str]  # path -> reason
    path: Path


def cache_key(paths: list[Path], image_size: int, color_mode: str) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{image_size}|{color_mode}\n".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _decode(args: tuple[str, str, int]) -> tuple[np.ndarray | None, str | None]:
    path, color_mode, size = args
    try:
        return load_image(path, color_mode, size), None
    except ImageLoadError as exc:
        return None, exc.reason


def _open(npy: Path, meta: Path, n: int, shape: tuple[int, ...]) -> ImageCache | None:
    try:
        info = json.loads(meta.read_text())
        images = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if images.shape != (n, *shape) or len(info.get("ok", [])) != n:
        return None  # truncated or foreign: rebuild
    return ImageCache(images, np.array(info["ok"], dtype=bool), info["errors"], npy)


def build_cache(
    paths: list[Path], image_size: int, color_mode: str, cache_dir: str | Path, workers: int = 0, quiet: bool = False
) -> ImageCache:
    """Return the cache for ``paths`` (in that order), decoding only if it is missing or stale."""
    shape = (image_size, image_size, channels(color_mode))
    cache_dir = Path(cache_dir).expanduser()
    key = cache_key(paths, image_size, color_mode)
    npy, meta = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if npy.exists() and meta.exists():
        cached = _open(npy, meta, len(paths), shape)
        if cached is not None:
            return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    ok = np.zeros(len(paths), dtype=bool)
    errors: dict[str, str] = {}
    workers = workers or os.cpu_count() or 1
    jobs = [(str(p), color_mode, image_size) for p in paths]
    with atomic_path(npy) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), *shape))
        reserve_space(tmp, tmp.stat().st_size)
        with task(f"decoding {len(paths)} images to {image_size} px {color_mode}", len(paths), not quiet) as advance:
            if workers > 1 and len(paths) > 64:
                with ProcessPoolExecutor(workers) as pool:
                    results = pool.map(_decode, jobs, chunksize=32)
                    _fill(out, ok, errors, paths, results, advance)
            else:
                _fill(out, ok, errors, paths, map(_decode, jobs), advance)
        out.flush()
        del out
    # The JSON is written last: its presence marks a complete cache.
    atomic_write_json(meta, {"version": CACHE_VERSION, "ok": ok.tolist(), "errors": errors,
                             "paths": [str(p) for p in paths]})
    return ImageCache(np.load(npy, mmap_mode="r"), ok, errors, npy)


def _fill(out, ok, errors, paths, results, advance) -> None:
    for i, (arr, err) in enumerate(results):
        if err is None:
            out[i] = arr
            ok[i] = True
        else:
            errors[str(paths[i])] = err
        advance()
