"""Data fingerprints: the SHA-256 of every image file's bytes, folded into one
digest per split. A run records them (and the manifest's SHA-256) so that a data
set whose files were edited, re-encoded or swapped under the same names is
noticed when the run is resumed or its model evaluated, instead of quietly
giving other numbers. File names and labels alone are covered by
:func:`medcls.data.split.split_digest`; this adds the content."""

from __future__ import annotations

import hashlib
from pathlib import Path

from medcls.data.datasets import SPLITS, DatasetIndex, Sample
from medcls.data.split import Splits

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def split_fingerprint(index: DatasetIndex, samples: list[Sample]) -> str:
    """SHA-256 over the sorted (relative path, label, content SHA-256) of ``samples``."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.path):
        try:
            content = file_sha256(s.path)
        except OSError as exc:  # unreadable files are reported by the decoder; here they just count as such
            content = f"unreadable: {exc.strerror or exc}"
        h.update(f"{s.path.relative_to(index.root).as_posix()}\t{s.label}\t{content}\n".encode())
    return h.hexdigest()


def data_fingerprint(index: DatasetIndex, splits: Splits) -> dict[str, str]:
    """Fingerprints of the train, val and test splits, and ``all`` over the three."""
    out = {name: split_fingerprint(index, splits.get(name, [])) for name in SPLITS}
    out["all"] = hashlib.sha256("".join(f"{n}\t{out[n]}\n" for n in SPLITS).encode()).hexdigest()
    return out
