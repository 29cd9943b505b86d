"""Fitting the shipped model to a new site (medcls calibrate / adapt) on small real subsets of
the Kermany test folder: provenance in the checkpoint, refusals with their reason, AdaBN's
statistics, the OOD threshold re-set, and patient-grouped folds."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from medcls.assets import shipped_model
from medcls.cli import main
from medcls.models import build_model
from medcls.models.checkpoint import ModelInfo, SiteState, load_checkpoint, save_checkpoint


def site_folder(root: Path, out: Path, per_class: int, start: int = 0) -> Path:
    """``out/CLASS/*``: links to ``per_class`` images of each class of the Kermany test folder."""
    for cls in ("NORMAL", "PNEUMONIA"):
        (out / cls).mkdir(parents=True)
        for src in sorted((root / "test" / cls).iterdir())[start::7][:per_class]:  # every 7th: many patients
            (out / cls / src.name).symlink_to(src)
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The shipped model without test-time augmentation (five times fewer passes; same statistics)."""
    net, info = load_checkpoint(shipped_model())
    return save_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", net, dataclasses.replace(info, tta=False))


@pytest.fixture(scope="module")
def labelled(xray_root, tmp_path_factory) -> Path:
    return site_folder(xray_root, tmp_path_factory.mktemp("site") / "labelled", 25)


def test_format_1_model_loads_without_site_and_site_round_trips(tmp_path):
    net, info = load_checkpoint(shipped_model())
    assert info.site is None and info.ood is not None  # the shipped file is format 1
    from medcls.models.checkpoint import SiteCalibration

    record = SiteCalibration("site", "ab" * 32, {"NORMAL": 30, "PNEUMONIA": 40}, "youden", "why", 0.37, 0.6, 0.55,
                             0.7, "2026-01-01T00:00:00+00:00", "x")
    save_checkpoint(tmp_path / "m.pt", net, dataclasses.replace(info, site=SiteState(calibration=record)))
    loaded = load_checkpoint(tmp_path / "m.pt")[1]
    assert isinstance(loaded.site, SiteState) and loaded.site.calibration == record and loaded.site.adaptation is None


def test_calibrate_refits_threshold_and_records_provenance(model, labelled, tmp_path, caplog):
    from medcls.api import calibrate
    from medcls.metrics.threshold import choose_threshold
    from medcls.models.inference import logits_to_probs
    from medcls.site.sample import labelled_sample

    with caplog.at_level(logging.WARNING, logger="medcls.site.sample"):
        result = calibrate(model, labelled, tmp_path / "site.pt", bootstrap=50, quiet=True)
    assert "under 50 per class" in caplog.text  # 25 per class: allowed, with a warning
    net, info = load_checkpoint(tmp_path / "site.pt")
    shipped_net, shipped = load_checkpoint(model)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), shipped_net.state_dict().values()))
    rec = info.site.calibration
    assert rec == result.record and rec.counts == {"NORMAL": 25, "PNEUMONIA": 25}
    assert (rec.threshold, rec.temperature) == (info.threshold, info.temperature)
    assert (rec.threshold_before, rec.temperature_before) == (shipped.threshold, shipped.temperature)
    assert "site's sample" in rec.threshold_reason
    from medcls.models.checkpoint import checkpoint_summary

    assert checkpoint_summary(info)["site"]["calibration"]["data_sha256"] == rec.data_sha256  # GET /v1/model
    # The threshold is Youden's J on the sample's calibrated probabilities, as the reason says.
    sample = labelled_sample(labelled, shipped, quiet=True)
    from medcls.inference.predictor import Predictor

    logits = Predictor(shipped_net, shipped).logits(sample.images)
    assert info.threshold == choose_threshold(sample.labels, logits_to_probs(logits, info.temperature)[:, 1],
                                              "youden")[0]
    # The data's provenance: relative path, label and file content of every image.
    assert rec.data_sha256 == sample.sha256
    assert result.after["accuracy"] >= result.before["accuracy"]  # in sample: Youden's J cannot lose balanced acc.
    lo, hi = result.threshold_ci95
    assert 0 <= lo <= hi <= 1 and set(result.ci95_out_of_bag) >= {"accuracy", "recall", "specificity"}


def test_calibrate_refuses_too_few_images_and_foreign_classes(xray_root, tmp_path, capsys):
    small = site_folder(xray_root, tmp_path / "small", 12)
    assert main(["calibrate", str(shipped_model()), "--data", str(small), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "too few labelled images" in err and "at least 20 per class" in err and "Traceback" not in err
    other = tmp_path / "other"
    for cls in ("A", "B"):
        (other / cls).mkdir(parents=True)
    assert main(["calibrate", str(shipped_model()), "--data", str(other)]) == 2
    assert "NORMAL" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_adabn_sets_batchnorm_statistics_to_the_site_images(xray_root):
    from medcls.data.images import load_image
    from medcls.data.prepared import to_model_input
    from medcls.site.adapt import adabn

    net, info = load_checkpoint(shipped_model())
    files = sorted((xray_root / "test" / "NORMAL").iterdir())[:16]
    images = np.stack([load_image(f, info.color_mode, info.image_size) for f in files])
    assert adabn(net, images, batch_size=64) == 10
    bn = net.backbone[1]
    with torch.no_grad():
        x = net.backbone[0]((to_model_input(torch.from_numpy(images)) - net.mean) / net.std)
    assert torch.allclose(bn.running_mean, x.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn.running_var, x.var(dim=(0, 2, 3), unbiased=True), rtol=1e-3, atol=1e-5)
    assert bn.momentum == 0.1 and not net.training


def test_adapt_rewrites_statistics_resets_ood_and_records(model, xray_root, tmp_path, capsys):
    from medcls.site.sample import unlabelled_images

    folder = site_folder(xray_root, tmp_path / "site", 20, start=3)
    out = tmp_path / "adapted.pt"
    assert main(["adapt", str(model), "--data", str(folder), "--out", str(out)]) == 0
    assert "AdaBN on 40 unlabelled images" in capsys.readouterr().err
    net, info = load_checkpoint(out)
    shipped_net, shipped = load_checkpoint(model)
    rec = info.site.adaptation
    assert rec.n_images == 40 and rec.batchnorm_layers == 10 and rec.ood_threshold == info.ood.threshold
    assert rec.ood_threshold_before == shipped.ood.threshold != info.ood.threshold
    assert rec.data_sha256 == unlabelled_images(folder, info, quiet=True).sha256
    assert not torch.equal(net.backbone[1].running_mean, shipped_net.backbone[1].running_mean)
    assert torch.equal(net.backbone[0].weight, shipped_net.backbone[0].weight)  # statistics only
    # The re-set detector flags its stored share (5%) of the site's images: 2 of 40.
    from medcls.inference.predictor import Predictor

    rows, _ = Predictor.load(out).predict(sorted(p for p in folder.rglob("*.jpeg")))
    assert sum(not r.in_distribution for r in rows) == 2


def test_adapt_refuses_a_network_without_batchnorm(tmp_path, capsys):
    net = build_model("seed-cnn", 1, 2, 32, padding="same")
    info = ModelInfo("seed-cnn", {"padding": "same"}, ["NORMAL", "PNEUMONIA"], 32, "grayscale", [0.5], [0.25])
    save_checkpoint(tmp_path / "plain.pt", net, info)
    assert main(["adapt", str(tmp_path / "plain.pt"), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no BatchNorm layers" in err and len(err.strip().splitlines()) == 1


def test_group_folds_keep_patients_together():
    from medcls.site.sample import group_folds

    groups = [f"p{i // 3}" for i in range(300)]
    labels = np.array([int(g[1:]) % 3 == 0 for g in groups], np.int64)
    folds = group_folds(labels, groups, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(300))
    owner = {groups[i]: k for k, fold in enumerate(folds) for i in fold}
    assert all(owner[groups[i]] == k for k, fold in enumerate(folds) for i in fold)
    assert all(0.2 < labels[f].mean() < 0.5 for f in folds)


def test_early_scales_detector_leaves_out_the_last_stage():
    """``mahalanobis-early`` (benchmarks/near_ood.py): the scales before the last, without the penultimate block."""
    from medcls.ood.detector import fit_detector

    rng = np.random.default_rng(0)
    blocks = [4, 4, 8, 8]
    train, val = rng.normal(size=(400, 24)), rng.normal(size=(200, 24))
    labels = np.arange(400) % 2
    detector = fit_detector("mahalanobis-early", blocks, train, labels, val, np.zeros((200, 1)), 0.05)
    assert sorted(detector.gaussians) == [0, 1]
    assert np.mean(detector.score(val, np.zeros((200, 1))) > detector.threshold) == pytest.approx(0.05, abs=0.006)
    shifted = val.copy()
    shifted[:, 16:] += 100  # the last scale and the penultimate block: not looked at
    assert np.array_equal(detector.score(shifted, np.zeros((200, 1))), detector.score(val, np.zeros((200, 1))))
