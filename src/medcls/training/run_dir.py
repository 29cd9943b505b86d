"""The folder a training run writes into: a new timestamped one, or one the user names,
which must be empty unless they say ``force`` (an earlier run is never overwritten silently)."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from medcls.config import Config, ConfigError

log = logging.getLogger(__name__)


def new_run_dir(cfg: Config) -> Path:
    """A new ``OUTPUT_DIR/NAME-TIMESTAMP`` folder (numbered when two runs start in the same second)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run = Path(cfg.output_dir) / f"{cfg.name}-{stamp}"
    i = 1
    while run.exists():
        run = Path(cfg.output_dir) / f"{cfg.name}-{stamp}-{i}"
        i += 1
    run.mkdir(parents=True)
    return run


def claim_run_dir(run_dir: str | Path, force: bool = False) -> Path:
    """``run_dir`` for a new run, created if needed; a folder that already holds files raises
    :class:`ConfigError` unless ``force`` (then the new run's files replace the earlier ones)."""
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise ConfigError(f"run folder {run} is a file, not a folder")
    if run.is_dir() and any(run.iterdir()):
        if not force:
            raise ConfigError(f"run folder {run} is not empty (an earlier run?): choose another --run-dir, "
                              f"pass --force to train over it, or continue an interrupted run with --resume {run}")
        log.warning("training over the non-empty run folder %s (--force): its earlier files are replaced as the "
                    "new run writes them; others stay", run)
    run.mkdir(parents=True, exist_ok=True)
    return run
