"""Group-aware, stratified train/val/test splits and their CSV manifest.

A group is a patient (or a set of duplicate images): all images of a group land
in one split, so no patient is seen in training and again in validation or test.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from medcls.core.io import atomic_write_text
from medcls.data.datasets import SPLITS, DataError, DatasetIndex, Sample

Splits = dict[str, list[Sample]]
MANIFEST_COLUMNS = ["path", "class", "label", "split", "group"]


def _take_groups(samples: list[Sample], fraction: float, rng: np.random.Generator) -> tuple[list, list]:
    """Move whole groups, class by class, until ``fraction`` of each class's images is taken."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.group].append(s)
    by_class: dict[int, list[str]] = defaultdict(list)
    for g in sorted(groups):
        label = Counter(s.label for s in groups[g]).most_common(1)[0][0]
        by_class[label].append(g)
    taken: set[str] = set()
    for label in sorted(by_class):
        names = by_class[label]
        target = fraction * sum(len(groups[g]) for g in names)
        count = 0
        for i in rng.permutation(len(names)):
            if count >= target:
                break
            taken.add(names[i])
            count += len(groups[names[i]])
    keep = [s for s in samples if s.group not in taken]
    take = [s for s in samples if s.group in taken]
    return keep, take


def make_split(index: DatasetIndex, val_fraction: float, test_fraction: float, seed: int,
               train_only: frozenset[str] = frozenset()) -> Splits:
    """Split an index: a given ``test/`` folder is kept as test; otherwise test is carved
    by group; validation is always carved from train by group (a given ``val/``, such as
    Kaggle's 16 images, joins the training pool: it is too small to select anything on).
    Fractions are of the training folder when a test folder is given, else of all images.
    Groups in ``train_only`` (e.g. label conflicts) never enter val or a carved test."""
    rng = np.random.default_rng(seed)
    given_test = [s for s in index.samples if s.given_split == "test"]
    pool = [s for s in index.samples if s.given_split != "test" and s.group not in train_only]
    held = [s for s in index.samples if s.given_split != "test" and s.group in train_only]
    if given_test:
        test, val_share = given_test, val_fraction
    else:
        pool, test = _take_groups(pool, test_fraction, rng)
        val_share = val_fraction / (1 - test_fraction)  # of what is left: 70/15/15 of all images
    train, val = _take_groups(pool, val_share, rng)
    splits = {"train": train + held, "val": val, "test": test}
    for name, items in splits.items():
        if not items and (name != "val" or val_fraction > 0):
            raise DataError(f"the {name} split of {index.root} is empty")
    return splits


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find: the connected-component label of each of ``n`` nodes linked by index ``pairs``."""
    pairs = pairs.reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def merge_groups(samples: list[Sample], linked: list[list[int]]) -> list[Sample]:
    """Union-find over groups: samples that share a group, or are linked (e.g. a set of
    duplicate images, as sample indices), end up in one group. A group merged from several
    is named ``dup:`` + its first name; the others keep theirs. Groups of a given ``test/`` folder are kept apart
    by name, since such folders may number their patients on their own."""
    keys = [("test:" if s.given_split == "test" else "") + s.group for s in samples]
    first: dict[str, int] = {}
    edges = [(first.setdefault(k, i), i) for i, k in enumerate(keys)]
    edges += [(m[0], j) for m in linked for j in m[1:]]
    comp = components(len(samples), np.array(edges, dtype=np.int64))
    names: dict[int, set[str]] = defaultdict(set)
    for c, k in zip(comp, keys):
        names[c].add(k)
    # A merged group is named by its first key, which belongs to no other component.
    merged = {c: f"dup:{min(g)}" for c, g in names.items() if len(g) > 1}
    return [Sample(s.path, s.label, merged.get(c, s.group), s.given_split) for c, s in zip(comp, samples)]


def limit_per_class(splits: Splits, limit: int | None, seed: int) -> Splits:
    """Keep at most ``limit`` images per split and class (a random, seeded subset)."""
    if limit is None:
        return splits
    rng = np.random.default_rng(seed)
    out: Splits = {}
    for name, items in splits.items():
        by_label: dict[int, list[Sample]] = defaultdict(list)
        for s in items:
            by_label[s.label].append(s)
        kept = []
        for label in sorted(by_label):
            group = by_label[label]
            idx = sorted(rng.permutation(len(group))[:limit])
            kept += [group[i] for i in idx]
        out[name] = kept
    return out


def manifest_text(index: DatasetIndex, splits: Splits) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for name in SPLITS:
        for s in splits.get(name, []):
            rel = s.path.relative_to(index.root).as_posix()
            writer.writerow([rel, index.classes[s.label], s.label, name, s.group])
    return buf.getvalue()


def split_table(index: DatasetIndex, splits: Splits, split: str = "test") -> str:
    """One split as CSV: ``path`` relative to the data root and ``label`` (the class index; for ordinal
    grades, the grade), in the manifest's order: a frozen test split others can score on."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label"])
    for s in splits.get(split, []):
        writer.writerow([s.path.relative_to(index.root).as_posix(), s.label])
    return buf.getvalue()


def split_digest(index: DatasetIndex, splits: Splits, split: str = "test") -> str:
    """SHA-256 of one split's (path, label) list: identifies a frozen test set."""
    h = hashlib.sha256()
    for s in sorted(splits.get(split, []), key=lambda s: s.path):
        h.update(f"{s.path.relative_to(index.root).as_posix()}\t{s.label}\n".encode())
    return h.hexdigest()


def write_manifest(path: str | Path, index: DatasetIndex, splits: Splits) -> None:
    atomic_write_text(path, manifest_text(index, splits))


def read_manifest(path: str | Path, index: DatasetIndex) -> Splits:
    """Rebuild splits from a manifest CSV, checking it against the scanned index."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split manifest not found: {path}")
    try:
        return _manifest_splits(path, index)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not a medcls split manifest (not CSV text: byte {exc.start} is not UTF-8)") from None
    except csv.Error as exc:
        raise DataError(f"{path} is not a medcls split manifest (not CSV: {exc})") from None


def _manifest_splits(path: Path, index: DatasetIndex) -> Splits:
    by_rel = {s.path.relative_to(index.root).as_posix(): s for s in index.samples}
    splits: Splits = {name: [] for name in SPLITS}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not set(MANIFEST_COLUMNS) <= set(reader.fieldnames):
            raise DataError(f"{path} is not a medcls split manifest (columns {MANIFEST_COLUMNS})")
        for row in reader:
            sample = by_rel.get(row["path"])
            if sample is None:
                raise DataError(f"manifest {path} lists {row['path']}, which is not in {index.root}")
            if row["split"] not in splits:
                raise DataError(f"manifest {path}: unknown split '{row['split']}' for {row['path']}")
            if index.classes[sample.label] != row["class"]:
                raise DataError(f"manifest {path}: {row['path']} is '{row['class']}' there but in class folder "
                                f"'{index.classes[sample.label]}' now")
            splits[row["split"]].append(Sample(sample.path, sample.label, row["group"], sample.given_split))
    return splits
