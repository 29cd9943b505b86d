import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcls.config import load_config
from medcls.data.cache import build_cache
from medcls.data.datasets import DataError, kermany_patient, load_index
from medcls.data.prepared import prepare_data
from medcls.data.split import make_split, read_manifest, split_digest, write_manifest


def test_real_counts(xray_root):
    index = load_index("pneumonia", xray_root)
    assert index.classes == ["NORMAL", "PNEUMONIA"]
    assert index.counts() == {"train": {"NORMAL": 1341, "PNEUMONIA": 3875}, "test": {"NORMAL": 234, "PNEUMONIA": 390}}


@pytest.mark.parametrize("name, patient", [
    ("person1000_bacteria_2931.jpeg", "PERSON1000"),
    ("person1000_virus_1681.jpeg", "PERSON1000"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-0115-0002.jpeg", "IM-0115"),
    ("something_else.png", "something_else"),
])
def test_patient_ids(name, patient):
    assert kermany_patient(Path(name)) == patient


def test_patient_split_is_disjoint_and_stratified(xray_root):
    index = load_index("pneumonia", xray_root)
    splits = make_split(index, 0.15, 0.15, seed=42)
    groups = {name: {s.group for s in items} for name, items in splits.items()}
    assert groups["train"] and groups["val"]
    assert not groups["train"] & groups["val"]
    # Kermany's test/ folder is kept as it is; its patient numbers are its own numbering
    # (person100 in train is a virus series, in test a bacteria series), so they are not compared.
    assert {s.path for s in splits["test"]} == {s.path for s in index.samples if s.given_split == "test"}
    assert len(splits["train"]) + len(splits["val"]) == 5216
    for label in (0, 1):
        n_train = sum(s.label == label for s in splits["train"])
        n_val = sum(s.label == label for s in splits["val"])
        assert 0.12 < n_val / (n_train + n_val) < 0.20  # stratified near 15% per class
    # same seed -> same split; other seed -> another split
    again = make_split(index, 0.15, 0.15, seed=42)
    assert [s.path for s in again["val"]] == [s.path for s in splits["val"]]
    other = make_split(index, 0.15, 0.15, seed=7)
    assert {s.path for s in other["val"]} != {s.path for s in splits["val"]}


def test_manifest_round_trip(xray_root, tmp_path):
    index = load_index("pneumonia", xray_root)
    splits = make_split(index, 0.15, 0.15, seed=1)
    write_manifest(tmp_path / "m.csv", index, splits)
    back = read_manifest(tmp_path / "m.csv", index)
    for name in splits:
        assert [(s.path, s.label, s.group) for s in back[name]] == [(s.path, s.label, s.group) for s in splits[name]]
    assert split_digest(index, back) == split_digest(index, splits)


def _tiny_layout(root: Path, xray_root: Path, n: int = 6) -> Path:
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True)
            for p in sorted((xray_root / split / cls).iterdir())[:n]:
                shutil.copy(p, root / split / cls / p.name)
    return root


def test_cache_round_trip_and_invalidation(xray_root, tmp_path):
    root = _tiny_layout(tmp_path / "data", xray_root)
    paths = sorted(root.rglob("*.jpeg"))
    first = build_cache(paths, 48, "grayscale", tmp_path / "cache", quiet=True)
    assert first.images.shape == (len(paths), 48, 48, 1) and first.ok.all()
    from medcls.data.images import load_image
    assert np.array_equal(first.images[3], load_image(paths[3], "grayscale", 48))
    again = build_cache(paths, 48, "grayscale", tmp_path / "cache", quiet=True)
    assert again.path == first.path  # reused, not rebuilt
    Image.new("L", (60, 60), 255).save(paths[0], format="JPEG")  # a file changes
    changed = build_cache(paths, 48, "grayscale", tmp_path / "cache", quiet=True)
    assert changed.path != first.path and changed.images[0].mean() > 250


def test_corrupt_image_is_reported_and_skipped(xray_root, tmp_path):
    root = _tiny_layout(tmp_path / "data", xray_root, n=8)
    bad = root / "train" / "PNEUMONIA" / "person9999_bacteria_1.jpeg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cfg = load_config(None, [f"data.root={root}", "data.image_size=32", "data.val_fraction=0.25",
                             f"data.cache_dir={tmp_path / 'cache'}"])
    data = prepare_data(cfg.data, quiet=True)
    assert list(data.cache.errors) == [str(bad)]
    assert "corrupt" in data.cache.errors[str(bad)]
    used = {p for split in ("train", "val", "test") for p in data.paths(split)}
    assert bad not in used and len(used) == 32


def test_bad_layouts(xray_root, tmp_path):
    with pytest.raises(DataError, match="data folder not found: .*nowhere"):
        load_index("pneumonia", tmp_path / "nowhere")
    root = _tiny_layout(tmp_path / "data", xray_root)
    for f in (root / "test" / "NORMAL").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"class folder .*test/NORMAL holds no images"):
        load_index("pneumonia", root)
    (root / "test" / "NORMAL").rmdir()
    with pytest.raises(DataError, match="class 'NORMAL' is missing in .*test"):
        load_index("pneumonia", root)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no class folders"):
        load_index("class-folders", flat)


def test_non_image_files_are_listed(xray_root, tmp_path):
    root = _tiny_layout(tmp_path / "data", xray_root)
    (root / "train" / "NORMAL" / "readme.txt").write_text("hello")
    index = load_index("pneumonia", root)
    assert [p.name for p in index.ignored] == ["readme.txt"]
