"""Stress validation (medcls.stress): perturbations, the replay of a real validation subset,
the shortcut score, its place in evaluate, the report and compare, and the augmentation
switches against shortcuts. Whether a switch lowers the score needs training: that is
benchmarks/stress_switches.py, not this file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medcls.api import compare, evaluate, stress
from medcls.cli import main
from medcls.config import AugmentConfig, ConfigError, load_config
from medcls.data.augment import BatchAugment
from medcls.data.images import load_image
from medcls.inference.predictor import Predictor, decide
from medcls.inference.saved_run import checkpoint_data, score
from medcls.models.checkpoint import load_checkpoint
from medcls.models.inference import logits_to_probs
from medcls.stress.perturbations import PERTURBATIONS, all_perturbations
from medcls.stress.replay import per_class_subset, replay
from medcls.stress.result import StressResult
from medcls.stress.score import ZOOM


@pytest.fixture(scope="module")
def xrays(xray_root) -> np.ndarray:
    """Six real chest X-rays of the validation folder's neighbours (train/), 64 px grayscale."""
    files = sorted((xray_root / "train" / "NORMAL").iterdir())[:3] + sorted((xray_root / "train" / "PNEUMONIA").iterdir())[:3]
    return np.stack([load_image(f, "grayscale", 64) for f in files])


def test_every_perturbation_is_the_identity_at_zero_and_keeps_size_and_range(xrays):
    rgb = np.repeat(xrays, 3, axis=-1)  # fundus models see RGB
    assert len(all_perturbations()) >= 14
    for p in all_perturbations():
        assert 0 in p.strengths and len(p.strengths) >= 4, p.name
        for images in (xrays, rgb):
            assert np.array_equal(p(images, 0), images), p.name
            for s in p.strengths:
                out = p(images, s, seed=3)
                assert out.shape == images.shape and out.dtype == np.uint8, (p.name, s)
                if s:
                    assert not np.array_equal(out, images), (p.name, s)
                    assert np.array_equal(out, p(images, s, seed=3)), (p.name, s)  # reproducible by seed


def test_zoom_in_is_a_centre_crop_resized_back(xrays):
    """At 0.5 the output is the central half of each side, magnified two-fold: its centre pixel
    block matches the original's centre, its corner comes from a quarter of the way in."""
    out = PERTURBATIONS.get("zoom_in")(xrays, 0.5).astype(int)
    assert np.abs(out[:, 30:34, 30:34] - xrays[:, 30:34, 30:34].astype(int)).mean() < 6
    assert np.abs(out[:, 0:2, 0:2].mean((1, 2)) - xrays[:, 16:17, 16:17].astype(int).mean((1, 2))).max() < 12


def test_replay_of_a_real_validation_subset(trained_run, tmp_path):
    result = stress(trained_run, out_dir=tmp_path, limit=6, seed=1, quiet=True)
    again = stress(trained_run, out_dir=tmp_path / "again", limit=6, seed=1, quiet=True)
    assert result.to_dict() == again.to_dict()  # reproducible by seed
    assert result.split == "val" and result.n_images == 12 and result.per_class == {"NORMAL": 6, "PNEUMONIA": 6}

    # strength 0 of every perturbation: the plain validation metrics of the same images
    net, info = load_checkpoint(trained_run / "model.pt")
    data = checkpoint_data(trained_run / "model.pt", info, quiet=True)
    rows = per_class_subset(data.labels["val"], 6, seed=1)
    y = data.labels["val"][rows]
    probs = logits_to_probs(Predictor(net, info).logits(data.images("val")[rows]), info.temperature)
    plain = score(y, probs, info)
    for curve in result.curves:
        zero = curve.at(0)
        assert zero == result.baseline
        assert zero.auc == pytest.approx(plain["roc_auc"]) and zero.accuracy == pytest.approx(plain["accuracy"])
        assert set(zero.flip.values()) <= {0.0}
    # flip rates: the share of correctly called images of a class called the other
    crop = result.curve(ZOOM[0]).at(ZOOM[1])
    cropped = logits_to_probs(Predictor(net, info).logits(PERTURBATIONS.get(ZOOM[0])(data.images("val")[rows], ZOOM[1])),
                              info.temperature)
    clean, flipped = decide(probs, info), decide(cropped, info)
    right = (y == 0) & (clean == 0)
    if right.any():
        assert crop.flip["NORMAL"] == pytest.approx((flipped[right] != 0).mean())
        assert result.score.zoom_flip == crop.flip["NORMAL"]
    aucs = [p.auc for c in result.curves for p in c.points if p.strength]
    assert result.score.worst_auc == pytest.approx(min(aucs)) and result.score.zoom_flip_class == "NORMAL"

    written = StressResult.load(tmp_path / "stress" / "stress.json")
    assert written.to_dict() == result.to_dict()
    assert {f.stem for f in (tmp_path / "stress").glob("*.png")} == {c.name for c in result.curves}
    assert json.loads((tmp_path / "shortcut_score.json").read_text())["worst_auc"] == result.score.worst_auc


def test_multiclass_flips_are_per_grade(fundus_run):
    net, info = load_checkpoint(fundus_run / "model.pt")
    data = checkpoint_data(fundus_run / "model.pt", info, quiet=True)
    rows = per_class_subset(data.labels["val"], 3)
    result = replay(Predictor(net, info), data.images("val")[rows], data.labels["val"][rows],
                    perturbations=[PERTURBATIONS.get("zoom_in"), PERTURBATIONS.get("markers")])
    present = {info.classes[k] for k in np.unique(data.labels["val"][rows])}
    for curve in result.curves:
        for p in curve.points:
            assert set(p.flip) <= present and all(0 <= v <= 1 for v in p.flip.values())
    assert result.threshold is None and result.score.zoom_flip_class == info.classes[0]


def test_evaluate_carries_the_stress_section_into_report_and_compare(trained_run, tmp_path):
    out = tmp_path / "eval"
    result = evaluate(trained_run, out_dir=out, bootstrap=0, quiet=True, stress_limit=3)
    assert result.stress is not None and result.stress.n_images == 6
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["stress"]["score"]["worst_auc"] == result.stress.score.worst_auc
    page = (out / "report.html").read_text()
    assert 'id="stress"' in page and page.count("stress: zoom_in") == 1  # the zoom_in plot is embedded
    row = compare([trained_run])[0]
    shortcut = json.loads((trained_run / "shortcut_score.json").read_text()) if (
        trained_run / "shortcut_score.json").is_file() else {}
    assert row["stress_auc"] == shortcut.get("worst_auc")

    plain = evaluate(trained_run, out_dir=tmp_path / "plain", bootstrap=0, quiet=True, report=False, stress=False)
    assert plain.stress is None and "stress" not in json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert not (tmp_path / "plain" / "stress").exists()


def test_cli_stress_and_its_errors(trained_run, tmp_path, capsys):
    assert main(["stress", str(trained_run), "--out", str(tmp_path), "--limit", "2"]) == 0
    assert (tmp_path / "stress" / "zoom_in.png").is_file()
    row = compare([tmp_path])[0]  # compare reads the score from the folder stress wrote
    assert row["zoom_flip"] == json.loads((tmp_path / "shortcut_score.json").read_text())["zoom_flip"]
    capsys.readouterr()
    assert main(["stress", str(trained_run), "--out", str(tmp_path), "--limit", "-1"]) == 2
    err = capsys.readouterr().err
    assert "at least 1" in err and "Traceback" not in err
    assert main(["stress", str(tmp_path / "missing")]) == 2


def test_augmentation_switches_keep_range_and_are_seeded(xrays):
    x = torch.from_numpy(xrays).permute(0, 3, 1, 2).float() / 255
    base = dict(rotation=0.0, shift=0.0, zoom=0.0, brightness=0.0, contrast=0.0)
    switches = {"crop_scale": 0.36, "crop_aspect": 0.3, "gamma": 0.5, "border": 1.0, "erase": 1.0}
    for key, value in switches.items():
        augment = BatchAugment(AugmentConfig(**base, **{key: value})).train()
        torch.manual_seed(0)
        first = augment(x)
        torch.manual_seed(0)
        assert torch.equal(first, augment(x)), key
        assert first.shape == x.shape and first.min() >= 0 and first.max() <= 1, key
        assert not torch.allclose(first, x, atol=1e-3), key
    off = BatchAugment(AugmentConfig(**base)).train()
    assert torch.equal(off(x), x)  # every switch off by default: old runs train as before
    border = BatchAugment(AugmentConfig(**base, border=1.0)).train()
    torch.manual_seed(0)
    assert (border(x)[..., 0, :] == 0).all()  # the band always covers the first row
    with pytest.raises(ConfigError, match="augment.crop_scale"):
        load_config(None, ["augment.crop_scale=0"])
