"""Diabetic retinopathy: the duplicate audit, duplicate-aware splits, QWK, and a short
5-class run on the real fundus data."""

import csv
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import cohen_kappa_score

from conftest import FUNDUS, ROOT, XRAY
from medcls.cli import main
from medcls.config import load_config
from medcls.data.audit import audit_dataset, audit_index
from medcls.data.datasets import RETINOPATHY_GRADES, load_index
from medcls.data.prepared import prepare_data
from medcls.data.split import read_manifest, split_digest, write_manifest
from medcls.metrics.classification import multiclass_metrics

pytestmark = pytest.mark.data  # reads the real data sets directly


@pytest.fixture(scope="session")
def fundus_root() -> Path:
    if not FUNDUS.is_dir():
        pytest.skip(f"test data not found at {FUNDUS} (set MEDCLS_TEST_DATA)")
    return FUNDUS


@pytest.fixture
def planted(fundus_root, tmp_path) -> Path:
    """Six real images per grade, plus an exact copy of a Healthy image filed under
    Severe DR and a re-encoded (JPEG q90) copy of a Moderate DR image beside it."""
    root = tmp_path / "fundus"
    for grade in RETINOPATHY_GRADES:
        (root / grade).mkdir(parents=True)
        for p in sorted((fundus_root / grade).iterdir())[:6]:
            shutil.copy(p, root / grade / p.name)
    healthy = sorted((root / "Healthy").iterdir())[0]
    shutil.copy(healthy, root / "Severe DR" / "planted_copy.jpg")
    moderate = sorted((root / "Moderate DR").iterdir())[0]
    Image.open(moderate).save(root / "Moderate DR" / "planted_resaved.jpg", quality=90)
    return root


def _group_of(audit, rel: str):
    for g in audit.groups:
        if rel in {audit.index.samples[i].path.relative_to(audit.index.root).as_posix() for i in g.members}:
            return g
    return None


def test_audit_finds_planted_duplicates_and_conflicts(planted, tmp_path):
    cache = tmp_path / "cache"
    audit = audit_dataset(planted, "retinopathy", tmp_path / "out", cache_dir=cache, quiet=True)
    healthy = sorted((planted / "Healthy").iterdir())[0].name
    copy = _group_of(audit, "Severe DR/planted_copy.jpg")
    assert copy is not None and copy.kind == "exact" and copy.conflict
    assert copy.classes == ["Healthy", "Severe DR"] and len(copy.members) == 2
    assert _group_of(audit, f"Healthy/{healthy}") is copy
    resaved = _group_of(audit, "Moderate DR/planted_resaved.jpg")
    assert resaved is not None and resaved.kind == "near" and not resaved.conflict
    assert audit.summary.conflict_groups >= 1 and audit.summary.exact_duplicate_sets >= 1
    assert audit.summary.conflicts_by_classes.get("Healthy | Severe DR", 0) >= 1

    rows = list(csv.DictReader((tmp_path / "out" / "audit.csv").open()))
    planted_row = next(r for r in rows if r["path"] == "Severe DR/planted_copy.jpg")
    assert planted_row["conflict"] == "yes" and planted_row["kind"] == "exact"
    assert json.loads((tmp_path / "out" / "audit.json").read_text())["conflict_groups"] == audit.summary.conflict_groups
    picture = Image.open(tmp_path / "out" / "audit_pairs.png")  # one row per group shown, conflicts first
    assert picture.size[1] >= 2.1 * 100 * min(len(audit.groups), 8) * 0.9

    # A second audit of the same files reads the cached hashes instead of decoding again.
    cached = list(cache.glob("audit-*.json"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = audit_dataset(planted, "retinopathy", cache_dir=cache, quiet=True)
    assert again.summary == audit.summary and cached[0].stat().st_mtime_ns == stamp


def test_audit_command(planted, tmp_path, capsys):
    assert main(["audit", str(planted), "--dataset", "retinopathy", "--out", str(tmp_path / "a")]) == 0
    assert "audit written to" in capsys.readouterr().out
    assert (tmp_path / "a" / "audit.csv").is_file()
    assert main(["inspect", str(planted), "--dataset", "retinopathy", "--out", str(tmp_path / "i")]) == 0
    info = json.loads((tmp_path / "i" / "inspection.json").read_text())
    assert info["audit"]["conflict_groups"] >= 1


@pytest.mark.slow
def test_real_data_split_keeps_duplicates_together(fundus_root, tmp_path):
    """On the real data: duplicate groups never cross splits, conflicts stay out of val/test,
    the split is stratified 70/15/15, and a run's manifest reproduces it."""
    cfg = load_config(ROOT / "configs" / "retinopathy-compact.yaml",
                      [f"data.root={fundus_root}", "data.image_size=16"]).data
    audit = audit_index(load_index("retinopathy", fundus_root), cfg.cache_dir, quiet=True)
    assert audit.summary.exact_duplicate_sets >= 100 and audit.summary.conflict_groups >= 20
    data = prepare_data(cfg, quiet=True)
    split_of = {s.path: name for name, items in data.splits.items() for s in items}
    for g in audit.groups:
        where = {split_of[audit.index.samples[i].path] for i in g.members}
        assert len(where) == 1, g
        if g.conflict:
            assert where == {"train"}, g
    groups = {name: {s.group for s in items} for name, items in data.splits.items()}
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert data.audit["held_in_train"] >= audit.summary.conflict_images
    total = sum(len(v) for v in data.splits.values())
    assert total == 2750
    for name, share in (("val", 0.15), ("test", 0.15)):
        assert abs(len(data.splits[name]) / total - share) < 0.02
        counts = Counter(s.label for s in data.splits[name])
        assert len(counts) == 5  # every grade present: stratified

    manifest = tmp_path / "manifest.csv"
    write_manifest(manifest, data.index, data.splits)
    cfg.split_seed = 7  # a frozen manifest wins over any new split
    again = prepare_data(cfg, manifest=manifest, quiet=True)
    assert split_digest(again.index, again.splits) == split_digest(data.index, data.splits)
    assert again.audit is None and read_manifest(manifest, again.index)["test"]


def test_conflicts_can_be_kept_in_evaluation(planted):
    cfg = load_config(None, [f"data.root={planted}", "data.dataset=retinopathy", "data.image_size=16",
                             "data.exclude_conflicts=false"]).data
    data = prepare_data(cfg, quiet=True)
    assert data.audit["exclude_conflicts"] is False and data.audit["held_in_train"] == 0
    off = load_config(None, [f"data.root={planted}", "data.dataset=retinopathy", "data.image_size=16",
                             "data.audit=false"]).data
    assert prepare_data(off, quiet=True).audit is None


def test_given_test_folder_is_kept_and_training_copies_dropped(tmp_path):
    """With a given test/ folder (Kermany layout): a training copy of a test image is dropped,
    a test image that conflicts is left out of the test split."""
    root = tmp_path / "xray"
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True)
            for p in sorted((XRAY / split / cls).iterdir())[:8]:
                shutil.copy(p, root / split / cls / p.name)
    test_image = sorted((root / "test" / "NORMAL").iterdir())[0]
    shutil.copy(test_image, root / "train" / "NORMAL" / "copy-of-test.jpeg")
    shutil.copy(test_image, root / "test" / "PNEUMONIA" / "mislabelled-copy.jpeg")
    cfg = load_config(None, [f"data.root={root}", "data.image_size=16", "data.audit=true",
                             "data.val_fraction=0.25"]).data
    data = prepare_data(cfg, quiet=True)
    used = {s.path.name for items in data.splits.values() for s in items}
    assert "copy-of-test.jpeg" not in used and "mislabelled-copy.jpeg" not in used
    assert test_image.name not in used
    assert data.audit["dropped_train_duplicates_of_test"] == 1 and data.audit["dropped_test_conflicts"] == 2
    assert len(data.splits["test"]) == 16 - 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_qwk_matches_reference(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, 300)
    probs = rng.dirichlet(np.ones(5), 300)
    pred = probs.argmax(axis=1)
    m = multiclass_metrics(y, probs, ordinal=True, referable_from=2)
    assert m["qwk"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"), abs=1e-12)
    # and the textbook formula: 1 - sum(W * O) / sum(W * E), W_ij = (i - j)^2 / (k - 1)^2
    observed = np.zeros((5, 5))
    np.add.at(observed, (y, pred), 1)
    expected = np.outer(observed.sum(1), observed.sum(0)) / len(y)
    w = (np.arange(5)[:, None] - np.arange(5)[None, :]) ** 2 / 16
    assert m["qwk"] == pytest.approx(1 - (w * observed).sum() / (w * expected).sum(), abs=1e-12)
    ref, ref_pred = y >= 2, pred >= 2
    assert m["referable_sensitivity"] == pytest.approx((ref & ref_pred).sum() / ref.sum())
    assert m["referable_specificity"] == pytest.approx((~ref & ~ref_pred).sum() / (~ref).sum())


@pytest.fixture(scope="module")
def fundus_run(fundus_root, tmp_path_factory) -> Iterator[Path]:
    """A short 5-class compact-CNN run on a real subset (64 px, 60 images per grade in training).
    One torch thread: on a shared 2-core machine two spinning threads run several times slower."""
    import torch

    from medcls.training.train import train

    out = tmp_path_factory.mktemp("fundus-runs")
    cfg = load_config(ROOT / "configs" / "retinopathy-compact.yaml", [
        f"data.root={fundus_root}", "data.image_size=64", "data.limit_per_class=60", "data.batch_size=16",
        "train.epochs=5", "train.threads=1", "augment.enabled=false", "model.kwargs.widths=[16,32,64,128]",
        f"output_dir={out}", "eval.bootstrap=100"])
    threads = torch.get_num_threads()
    try:
        yield train(cfg, quiet=True)
    finally:
        torch.set_num_threads(threads)


def test_five_class_run_beats_chance_end_to_end(fundus_run, tmp_path):
    from medcls.api import evaluate

    data_json = json.loads((fundus_run / "data.json").read_text())
    assert data_json["audit"]["conflict_groups"] >= 20 and data_json["audit"]["exclude_conflicts"]
    result = evaluate(fundus_run, out_dir=tmp_path, quiet=True)
    m = result.metrics
    assert result.classes == RETINOPATHY_GRADES
    assert m["ovr_auc"] > 0.65 and m["balanced_accuracy"] > 0.3  # chance: 0.5 and 0.2
    assert -1 <= m["qwk"] <= 1 and "qwk" in result.ci95
    assert 0 <= m["referable_sensitivity"] <= 1 and 0 <= m["referable_specificity"] <= 1
    assert np.array(result.confusion_matrix).shape == (5, 5)
    assert [row["class"] for row in result.per_class] == RETINOPATHY_GRADES
    for name in ("confusion_matrix.png", "roc.png", "predictions.csv"):
        assert (tmp_path / name).stat().st_size > 1000, name

    target = tmp_path / "pred.csv"
    images = sorted((FUNDUS / "Severe DR").iterdir())[:3]
    assert main(["predict", *map(str, images), "--model", str(fundus_run), "--out", str(target)]) == 0
    rows = list(csv.DictReader(target.open()))
    columns = ["path", "prediction"] + [f"p_{g}" for g in RETINOPATHY_GRADES] + ["ood_score", "in_distribution"]
    assert list(rows[0]) == columns
    assert all(abs(sum(float(r[f"p_{g}"]) for g in RETINOPATHY_GRADES) - 1) < 1e-4 for r in rows)


def test_cutpoint_decision_is_fitted_on_validation_and_used_everywhere(fundus_run, tmp_path):
    """``recalibrate --ordinal-decision cutpoints``: the cut-points go into the checkpoint, and
    evaluation and prediction decide with them (the predicted grade is the cut expected grade)."""
    import shutil

    from medcls.api import evaluate, recalibrate
    from medcls.metrics.ordinal import grade_decision
    from medcls.models.checkpoint import load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(fundus_run, run)
    cal = recalibrate(run, ordinal_decision="cutpoints", quiet=True)
    info = load_checkpoint(run / "model.pt")[1]
    assert info.cutpoints == cal.cutpoints and len(cal.cutpoints) == 4 and cal.cutpoints == sorted(cal.cutpoints)
    assert info.threshold_rule == "cutpoints" and "maximising validation QWK" in cal.threshold_reason
    evaluate(run, out_dir=tmp_path / "eval", quiet=True, report=False)
    rows = list(csv.DictReader((tmp_path / "eval" / "predictions.csv").open()))
    probs = np.array([[float(r[f"p_{g}"]) for g in RETINOPATHY_GRADES] for r in rows])
    expected = [RETINOPATHY_GRADES[k] for k in grade_decision(probs, info.cutpoints)]
    assert [r["prediction"] for r in rows] == expected
