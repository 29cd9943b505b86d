"""Where medcls keeps files of its own between runs."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> str:
    """Where decoded-image caches live: ``$MEDCLS_CACHE`` or ``~/.cache/medcls``."""
    return os.environ.get("MEDCLS_CACHE", str(Path.home() / ".cache" / "medcls"))


def default_data_root() -> str:
    """The chest X-ray data: ``$MEDCLS_DATA`` if set, else ``../shared/data/chest_xray`` (relative to the working folder)."""
    return os.environ.get("MEDCLS_DATA", "../shared/data/chest_xray")
