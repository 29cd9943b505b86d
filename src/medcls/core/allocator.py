"""Keep freed memory in the process instead of handing it back to the operating system.

glibc's malloc serves every block over 32 MB with a fresh ``mmap`` and unmaps it on free,
so each training step's large activations (a batch of 32 seed-CNN images at 224 px has
100 MB tensors) are page-faulted in anew, page by page, every step: that, not arithmetic,
was about 40% of the seed CNN's training step on a 2-core CPU (``benchmarks/roofline.py``
measures the step with and without). Turning ``mmap`` off and trimming off keeps the
memory of the previous step for the next one, at the cost of the process holding on to
its peak memory until it exits. Training (``train.reuse_memory``) and the
:class:`~medcls.inference.predictor.Predictor`'s PyTorch backends turn it on.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters (malloc.h), and the environment variables glibc reads for them at start-up
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_ENVIRONMENT = {M_MMAP_MAX: "MALLOC_MMAP_MAX_", M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_"}
_KEEP = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2 ** 31 - 1}  # no mmap; never trim (mallopt takes a C int)
_DEFAULT = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}  # glibc's defaults


def _mallopt():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
        return None


def reuse_freed_memory(enable: bool = True) -> bool:
    """Make malloc keep freed memory for reuse (``enable``) or restore glibc's defaults.

    Returns whether the setting took effect (False where the C library is not glibc)."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    values = _KEEP if enable else _DEFAULT
    return all(mallopt(param, value) == 1 for param, value in values.items())


def keep_freed_memory_environment() -> dict[str, str]:
    """The same setting as environment variables, for a process started from this one (glibc)."""
    return {_ENVIRONMENT[param]: str(value) for param, value in _KEEP.items()}
