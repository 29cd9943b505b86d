"""Data audit: exact duplicates (identical decoded pixels), near duplicates
(perceptual hash within a small Hamming distance) and label conflicts (one
image, or a near copy of it, filed under two classes).

The perceptual hash is ``imagehash.phash`` with ``hash_size=16`` (256 bits).
The common 64-bit hash is too coarse for fundus photographs: they are all a
bright disc on a dark background, and on the retinopathy data different eyes
collide at distance 0 (pixel correlation 0.81). With 256 bits, the pairs that
are the same photograph re-processed lie at distance 2-18 (pixel correlation
>= 0.98), the closest pair of different photographs at 26 and the bulk far
above; nothing lies at 19-25. The default :data:`NEAR_DISTANCE` = 22 sits in
that gap.

Hashes are computed once per file and cached beside the decoded images, under
the decode cache's key (paths, sizes, modification times), so a second audit
of the same files only compares hashes.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from medcls.core.figures import save_png, subplots
from medcls.core.io import atomic_write_json, atomic_write_text
from medcls.core.paths import default_cache_dir
from medcls.core.progress import track
from medcls.data.cache import cache_key
from medcls.data.datasets import DatasetIndex, load_index
from medcls.data.images import ImageLoadError, load_image
from medcls.data.split import components, merge_groups

AUDIT_VERSION = 1
HASH_SIZE = 16  # phash bits = HASH_SIZE ** 2
NEAR_DISTANCE = 22  # Hamming distance (of 256 bits) up to which two images are near duplicates
CSV_COLUMNS = ["group", "kind", "conflict", "classes", "class", "path", "pixel_sha256"]


@dataclass
class DuplicateGroup:
    """Images linked by identical pixels or a near-identical perceptual hash."""

    id: int
    members: list[int]  # indices into the index's samples
    kind: str  # "exact": all members have identical pixels; "near": at least one only looks the same
    classes: list[str]  # the distinct classes of the members, in label order

    @property
    def conflict(self) -> bool:
        return len(self.classes) > 1


@dataclass(frozen=True)
class AuditSummary:
    """The counts of an audit (``audit.json``)."""

    dataset: str
    root: str
    images: int
    unreadable: int
    hash: str
    max_distance: int
    exact_duplicate_sets: int
    exact_duplicate_images: int
    exact_redundant_copies: int
    duplicate_groups: int
    near_duplicate_groups: int
    images_in_duplicate_groups: int
    within_class_groups: int
    conflict_groups: int
    conflict_images: int
    conflicts_by_classes: dict[str, int]
    unreadable_files: dict[str, str]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def line(self) -> str:
        """The audit in one line, for ``inspect`` and logs."""
        return (f"audit: {self.exact_duplicate_sets} exact-duplicate sets ({self.exact_duplicate_images} "
                f"images), {self.near_duplicate_groups} near-duplicate groups, {self.conflict_groups} label "
                f"conflicts ({self.conflict_images} images)")


@dataclass
class Audit:
    index: DatasetIndex
    groups: list[DuplicateGroup]  # clusters of two or more images
    summary: AuditSummary
    pixel_sha: list[str | None]  # per sample; None where the file could not be decoded

    def conflicting_samples(self) -> set[int]:
        return {i for g in self.groups if g.conflict for i in g.members}


def _hash_file(path: str) -> tuple[str | None, str | None, str | None]:
    """(SHA-256 of the decoded RGB pixels, phash hex, error)."""
    try:
        pixels = load_image(path, "rgb")
    except ImageLoadError as exc:
        return None, None, exc.reason
    sha = hashlib.sha256(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest()
    return sha, str(imagehash.phash(Image.fromarray(pixels), hash_size=HASH_SIZE)), None


def image_hashes(paths: list[Path], cache_dir: str | Path | None = None, workers: int = 0,
                 quiet: bool = False) -> dict:
    """Pixel SHA-256 and perceptual hash of every file (cached): ``{"sha", "phash", "errors"}``."""
    cache_dir = Path(cache_dir or default_cache_dir()).expanduser()
    # The decode cache's key with the hash size and an audit tag in place of image size and colour mode.
    target = cache_dir / f"audit-{cache_key(paths, HASH_SIZE, f'phash-v{AUDIT_VERSION}')}.json"
    if target.is_file():
        try:
            cached = json.loads(target.read_text())
            if len(cached.get("sha", [])) == len(paths):
                return cached
        except (OSError, ValueError):
            pass  # damaged: recompute
    workers = workers or os.cpu_count() or 1
    jobs = [str(p) for p in paths]
    description = f"hashing {len(paths)} images"
    if workers > 1 and len(paths) > 64:
        with ProcessPoolExecutor(workers) as pool:
            results = list(track(pool.map(_hash_file, jobs, chunksize=32), description, len(paths), not quiet))
    else:
        results = list(track(map(_hash_file, jobs), description, len(paths), not quiet))
    out = {"version": AUDIT_VERSION, "sha": [r[0] for r in results], "phash": [r[1] for r in results],
           "errors": {p: r[2] for p, r in zip(jobs, results) if r[2] is not None}}
    atomic_write_json(target, out)
    return out


def near_pairs(bits: np.ndarray, max_distance: int, block: int = 1024) -> np.ndarray:
    """Index pairs ``(i, j)``, ``i < j``, of bit rows within ``max_distance`` (Hamming)."""
    signs = bits.astype(np.float32) * 2 - 1  # +/-1: dot = bits - 2 * distance, exact in float32
    n, nbits = signs.shape
    found = []
    for start in range(0, n, block):
        dist = (nbits - signs[start:start + block] @ signs.T) / 2
        i, j = np.nonzero(dist <= max_distance)
        i += start
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)


def _clusters(n: int, pairs: np.ndarray) -> list[list[int]]:
    """Connected components of the pair graph, of two or more members."""
    members: dict[int, list[int]] = {}
    for i, c in enumerate(components(n, pairs)):
        members.setdefault(int(c), []).append(i)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


def audit_index(index: DatasetIndex, cache_dir: str | Path | None = None, workers: int = 0, quiet: bool = False,
                max_distance: int = NEAR_DISTANCE) -> Audit:
    """Find exact and near duplicates and label conflicts among the samples of ``index``."""
    paths = [s.path for s in index.samples]
    hashes = image_hashes(paths, cache_dir, workers, quiet)
    ok = np.array([h is not None for h in hashes["phash"]], dtype=bool)
    rows = np.flatnonzero(ok)
    # imagehash writes the bits most significant first, as unpackbits reads them.
    packed = b"".join(bytes.fromhex(hashes["phash"][i]) for i in rows)
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8)).reshape(len(rows), HASH_SIZE * HASH_SIZE)
    near = rows[near_pairs(bits, max_distance)] if len(rows) else np.zeros((0, 2), dtype=np.int64)
    by_sha: dict[str, list[int]] = {}
    for i in rows:
        by_sha.setdefault(hashes["sha"][i], []).append(int(i))
    exact = [(m[0], k) for m in by_sha.values() for k in m[1:]]
    pairs = np.concatenate([near.reshape(-1, 2), np.array(exact, dtype=np.int64).reshape(-1, 2)])
    groups = []
    for gid, members in enumerate(_clusters(len(paths), pairs), start=1):
        labels = sorted({index.samples[i].label for i in members})
        kind = "exact" if len({hashes["sha"][i] for i in members}) == 1 else "near"
        groups.append(DuplicateGroup(gid, members, kind, [index.classes[k] for k in labels]))
    summary = _summarise(index, groups, by_sha, hashes["errors"], max_distance)
    return Audit(index, groups, summary, hashes["sha"])


def _summarise(index: DatasetIndex, groups: list[DuplicateGroup], by_sha: dict[str, list[int]],
               errors: dict[str, str], max_distance: int) -> AuditSummary:
    exact_sets = [m for m in by_sha.values() if len(m) > 1]
    conflicts = [g for g in groups if g.conflict]
    pairs = Counter(" | ".join(g.classes) for g in conflicts)
    return AuditSummary(
        dataset=index.name, root=str(index.root), images=len(index.samples), unreadable=len(errors),
        hash=f"imagehash.phash hash_size={HASH_SIZE} ({HASH_SIZE ** 2} bits)", max_distance=max_distance,
        exact_duplicate_sets=len(exact_sets),
        exact_duplicate_images=sum(len(m) for m in exact_sets),
        exact_redundant_copies=sum(len(m) - 1 for m in exact_sets),
        duplicate_groups=len(groups),
        near_duplicate_groups=sum(g.kind == "near" for g in groups),
        images_in_duplicate_groups=sum(len(g.members) for g in groups),
        within_class_groups=len(groups) - len(conflicts),
        conflict_groups=len(conflicts),
        conflict_images=sum(len(g.members) for g in conflicts),
        conflicts_by_classes=dict(sorted(pairs.items())),
        unreadable_files=errors,
    )


def audit_csv(audit: Audit) -> str:
    """One row per image in a duplicate group (columns :data:`CSV_COLUMNS`)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    index = audit.index
    for g in audit.groups:
        for i in g.members:
            s = index.samples[i]
            writer.writerow([g.id, g.kind, "yes" if g.conflict else "no", "|".join(g.classes),
                             index.classes[s.label], s.path.relative_to(index.root).as_posix(), audit.pixel_sha[i]])
    return buf.getvalue()


def audit_dataset(root: str | Path, dataset: str | None = None, out_dir: str | Path | None = None,
                  cache_dir: str | Path | None = None, workers: int = 0, quiet: bool = False,
                  max_distance: int | None = None) -> Audit:
    """Audit the data set at ``root``; with ``out_dir`` write ``audit.csv`` (the groups)
    and ``audit.json`` (the summary) there. Returns the :class:`Audit`.

    ``max_distance``: near duplicates' largest phash distance (default :data:`NEAR_DISTANCE`)."""
    distance = NEAR_DISTANCE if max_distance is None else max_distance
    audit = audit_index(load_index(dataset, root), cache_dir, workers, quiet, distance)
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_text(out / "audit.csv", audit_csv(audit))
        atomic_write_json(out / "audit.json", audit.summary.to_dict())
        if audit.groups:
            pairs_picture(audit, out / "audit_pairs.png")
    return audit


def pairs_picture(audit: Audit, path: Path, groups: int = 8, per_group: int = 4, size: int = 128) -> Path:
    """A PNG of the first ``groups`` duplicate groups, label conflicts first: one row per group,
    its images side by side with their class and file name (what a person checks by eye)."""
    shown = sorted(audit.groups, key=lambda g: (not g.conflict, g.id))[:groups]
    fig, axes = subplots(len(shown), per_group, figsize=(1.9 * per_group, 2.1 * len(shown)), squeeze=False)
    index = audit.index
    for row, g in zip(axes, shown):
        for j, ax in enumerate(row):
            ax.axis("off")
            if j >= len(g.members):
                continue
            s = index.samples[g.members[j]]
            try:
                img = load_image(s.path, "rgb", size)
                ax.imshow(img)
            except ImageLoadError:
                ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
            ax.set_title(f"{index.classes[s.label]}\n{s.path.name[:22]}", fontsize=6,
                         color="#c0392b" if g.conflict else "black")
        row[0].text(-0.08, 0.5, f"group {g.id}: {g.kind}{', CONFLICT' if g.conflict else ''}",
                    transform=row[0].transAxes, ha="right", va="center", fontsize=7, rotation=90)
    return save_png(fig, path, dpi=100)


def deduplicate(index: DatasetIndex, audit: Audit, exclude_conflicts: bool = True
                ) -> tuple[DatasetIndex, frozenset[str], dict]:
    """Prepare ``index`` for splitting so that no duplicate crosses splits.

    Every duplicate group is merged with the patient groups it touches into one split
    group. A given ``test/`` folder stays as it is: training images that duplicate a
    test image are dropped. With ``exclude_conflicts`` images filed under two classes
    stay out of evaluation: held in training, or dropped from a given test folder.
    Returns the new index, the groups to hold in training, and a report for ``data.json``.
    """
    samples = merge_groups(index.samples, [g.members for g in audit.groups])
    conflicted = audit.conflicting_samples() if exclude_conflicts else set()
    in_test = {s.group for s in samples if s.given_split == "test" and s.group.startswith("dup:")}
    keep, dropped_train, dropped_test = [], 0, 0
    for i, s in enumerate(samples):
        if s.given_split == "test" and i in conflicted:
            dropped_test += 1
        elif s.given_split != "test" and s.group in in_test:
            dropped_train += 1
        else:
            keep.append(s)
    held = frozenset(samples[i].group for i in conflicted if samples[i].given_split != "test")
    summary = audit.summary.to_dict()
    report = {key: summary[key] for key in (
        "exact_duplicate_sets", "exact_duplicate_images", "near_duplicate_groups", "duplicate_groups",
        "images_in_duplicate_groups", "conflict_groups", "conflict_images", "max_distance")}
    report.update(exclude_conflicts=exclude_conflicts, held_in_train=sum(s.group in held for s in keep),
                  dropped_test_conflicts=dropped_test, dropped_train_duplicates_of_test=dropped_train)
    return dataclasses.replace(index, samples=keep), held, report
