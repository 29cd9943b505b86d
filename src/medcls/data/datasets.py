"""Dataset registry: each data set is one decorated function that scans a folder
into a :class:`DatasetIndex` (files, labels, given splits, patient groups).

Layouts understood everywhere: ``ROOT/{train,val,test}/CLASS/*`` (the Kermany /
Kaggle layout; ``val`` and ``test`` optional) or ``ROOT/CLASS/*`` (class folders
only; the project makes the splits).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from medcls.core.registry import Registry
from medcls.data.images import IMAGE_SUFFIXES

SPLITS = ("train", "val", "test")
GENERIC = "class-folders"  # fits any class-folder layout: the fallback of detect_dataset
log = logging.getLogger(__name__)


class DataError(ValueError):
    """The data folder does not have the expected layout; the message names the folder."""


@dataclass
class Sample:
    path: Path
    label: int
    group: str  # patient (or duplicate group): never split across train/val/test
    given_split: Optional[str] = None  # from the folder layout, if any


@dataclass
class DatasetIndex:
    name: str
    root: Path
    classes: list[str]  # in label order (clinical order for ordinal grades)
    samples: list[Sample]
    color_mode: str  # the data set's default colour mode
    ordinal: bool = False
    ignored: list[Path] = field(default_factory=list)  # non-image files found in class folders
    positive_class: Optional[str] = None  # the "disease" class for binary metrics
    referable_from: Optional[str] = None  # ordinal grades: first grade of the clinical "referable" view
    audit: bool = False  # audit for duplicates before splitting, unless the config says otherwise

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def counts(self) -> dict[str, dict[str, int]]:
        """Image counts per given split (or 'all') and class."""
        out: dict[str, dict[str, int]] = {}
        for s in self.samples:
            row = out.setdefault(s.given_split or "all", {c: 0 for c in self.classes})
            row[self.classes[s.label]] += 1
        return out


DatasetFn = Callable[[Path], DatasetIndex]
DATASETS: Registry[DatasetFn] = Registry("dataset")


def _list_images(folder: Path, ignored: list[Path]) -> list[Path]:
    files = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        (files if p.suffix.lower() in IMAGE_SUFFIXES else ignored).append(p)
    return files


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_folders(
    root: str | Path,
    name: str,
    classes: list[str] | None = None,
    color_mode: str = "rgb",
    group_of: Callable[[Path], str] | None = None,
    ordinal: bool = False,
    positive_class: str | None = None,
    referable_from: str | None = None,
    audit: bool = False,
) -> DatasetIndex:
    """Scan either layout into an index; ``classes`` fixes the label order (else sorted names)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    group_of = group_of or (lambda p: p.stem)
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if split_dirs and "train" not in split_dirs:
        raise DataError(f"{root} has {'/'.join(split_dirs)} but no train/ folder")
    layout = split_dirs or {None: root}
    first = split_dirs.get("train", root)
    found = _class_folders(first)
    if not found:
        raise DataError(f"no class folders in {first} (expected one sub-folder per class)")
    if classes is None:
        classes = found
    else:
        missing = [c for c in classes if c not in found]
        extra = [c for c in found if c not in classes]
        if missing or extra:
            raise DataError(
                f"class folders in {first} do not match data set '{name}': "
                + "; ".join(x for x in (missing and f"missing {missing}", extra and f"unexpected {extra}") if x)
            )
    samples: list[Sample] = []
    ignored: list[Path] = []
    for split, folder in layout.items():
        present = _class_folders(folder)
        for cls in present:
            if cls not in classes:
                raise DataError(f"{folder / cls}: class '{cls}' is not among the training classes {classes}")
        for label, cls in enumerate(classes):
            class_dir = folder / cls
            if not class_dir.is_dir():
                if split == "val":  # a partial val/ is harmless: it is folded into train
                    continue
                raise DataError(f"class '{cls}' is missing in {folder} (no folder {class_dir})")
            files = _list_images(class_dir, ignored)
            if not files:
                raise DataError(f"class folder {class_dir} holds no images")
            samples += [Sample(p, label, group_of(p), split) for p in files]
    return DatasetIndex(name, root, list(classes), samples, color_mode, ordinal, ignored, positive_class,
                        referable_from, audit)


_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_IM = re.compile(r"^(?:NORMAL2-)?(IM-\d+)-", re.IGNORECASE)


def kermany_patient(path: Path) -> str:
    """Patient id from a Kermany file name.

    ``person123_bacteria_45.jpeg`` -> ``person123``; ``IM-0115-0001.jpeg`` and
    ``NORMAL2-IM-0115-0001.jpeg`` -> ``IM-0115`` (the NORMAL2 prefix is treated as
    the same patient numbering, which can only merge groups, never leak them).
    Unknown names fall back to the file stem (one image, one group).
    """
    name = path.name
    m = _PERSON.match(name) or _IM.match(name)
    return m.group(1).upper() if m else path.stem


@DATASETS.register("pneumonia")
def pneumonia(root: Path) -> DatasetIndex:
    """Kermany / Kaggle chest-xray-pneumonia: NORMAL vs PNEUMONIA, grouped by patient."""
    return scan_folders(
        root, "pneumonia", ["NORMAL", "PNEUMONIA"], "grayscale", kermany_patient, positive_class="PNEUMONIA"
    )


@DATASETS.register(GENERIC)
def class_folders(root: Path) -> DatasetIndex:
    """Any data in class folders; labels in sorted folder-name order, one group per image."""
    return scan_folders(root, "class-folders")


# Clinical order of diabetic-retinopathy grades (folder names sort differently).
RETINOPATHY_GRADES = ["Healthy", "Mild DR", "Moderate DR", "Severe DR", "Proliferate DR"]


@DATASETS.register("retinopathy")
def retinopathy(root: Path) -> DatasetIndex:
    """Diabetic retinopathy fundus photographs, 5 ordinal grades (RGB); audited for duplicates
    (the public copy holds exact copies, some filed under two grades)."""
    return scan_folders(root, "retinopathy", RETINOPATHY_GRADES, "rgb", ordinal=True, referable_from="Moderate DR",
                        audit=True)


def _scan_any(root: Path) -> DatasetIndex:
    """The index of the first data set with fixed class folders that accepts ``root``, else the generic one."""
    for name in DATASETS.names():
        if name != GENERIC:
            try:
                return DATASETS.get(name)(root)
            except DataError:
                continue  # another layout; a wrong one fails at the class-folder check, before any file is listed
    return DATASETS.get(GENERIC)(root)


def detect_dataset(root: str | Path) -> str:
    """The registered data set that the layout at ``root`` fits (its class folders, its splits):
    one with fixed class names (``pneumonia``, ``retinopathy``) where they match, else ``class-folders``.
    Raises :class:`DataError` when no registered data set can read the folder."""
    return _scan_any(Path(root).expanduser()).name


def load_index(name: str | None, root: str | Path) -> DatasetIndex:
    """Scan ``root`` with the registered data set ``name`` (None: the one its layout fits, see
    :func:`detect_dataset`). When ``name`` does not fit but another does, the error says which."""
    root = Path(root).expanduser()
    if name is None:
        index = _scan_any(root)
        log.info("data set '%s' (detected from the class folders of %s; --dataset to choose another)", index.name, root)
        return index
    scan = DATASETS.get(name)
    try:
        return scan(root)
    except DataError as exc:
        try:
            fits = detect_dataset(root)
        except DataError:
            raise exc from None  # no layout fits: the first error names the problem
        raise DataError(f"{exc}; this folder fits --dataset {fits}") from None
