"""Atomic file writes: write to a temporary file beside the target, flush it to
disk, then rename, so a crash never leaves a half-written file that a later
command would trust. A full disk is reported naming the file, and the previous
version of that file is left as it was; so is a folder the user may not write to."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


class DiskFullError(OSError):
    """The disk (or quota) filled up while writing ``filename``; nothing was replaced."""

    def __init__(self, path: str | Path, code: int = errno.ENOSPC):
        super().__init__(code, os.strerror(code), str(path))

    def __str__(self) -> str:
        return (f"no space left on device while writing {self.filename}; the previous version (if any) is "
                f"untouched — free some space and run again")


class NotWritableError(OSError):
    """``filename`` (or its folder) may not be written: permissions or a read-only file system."""

    def __init__(self, path: str | Path, code: int = errno.EACCES):
        super().__init__(code, os.strerror(code), str(path))

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror.lower()}; choose a folder you can write to"


def not_writable(exc: BaseException) -> bool:
    """Whether ``exc`` is a refused write (permissions, read-only file system)."""
    return isinstance(exc, OSError) and exc.errno in NOT_WRITABLE


def _temporary_beside(path: Path) -> str:
    """A new empty temporary file in ``path``'s folder (made if missing)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if not_writable(exc):  # name the file the user asked for, not the temporary one
            raise NotWritableError(path, exc.errno) from None
        raise
    os.close(fd)
    return tmp


def check_writable(path: str | Path) -> None:
    """Raise :class:`NotWritableError` now if ``path`` could not be written later: before work
    whose result would otherwise be lost. Creates its folder; leaves no file behind."""
    os.unlink(_temporary_beside(Path(path)))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success."""
    path = Path(path)
    tmp = _temporary_beside(path)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; give the usual permissions
    try:
        yield Path(tmp)
        _fsync(tmp)  # the rename must never expose data still only in the page cache
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        full = _disk_full(exc)
        if full is not None and not isinstance(exc, DiskFullError):
            raise DiskFullError(path, full.errno) from None
        raise


def _disk_full(exc: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT error behind ``exc``, if any (torch's writer wraps it in a RuntimeError)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDWR)  # Windows can only flush a writable handle
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically, through a Python file object: torch's own file writer
    reports a full disk as an anonymous RuntimeError, a file object raises ``OSError``."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def reserve_space(path: str | Path, size: int) -> None:
    """Allocate ``size`` bytes of ``path`` on disk now, so that a full disk is an ``OSError``
    here rather than a SIGBUS later, when pages of a memory map of it are written."""
    if hasattr(os, "posix_fallocate"):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise  # other failures (a file system without fallocate) just leave the file sparse
        finally:
            os.close(fd)


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays end up in metrics dicts
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
