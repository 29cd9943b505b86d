import json

import numpy as np
import pytest
import torch

from medcls.api import evaluate
from medcls.config import config_from_dict
from medcls.data.prepared import prepare_data
from medcls.evaluation.evaluate import EvaluationError
from medcls.inference.predictor import Predictor
from medcls.metrics.calibration import fit_temperature, nll
from medcls.models.checkpoint import CheckpointError, load_checkpoint


def test_short_training_beats_chance(trained_run):
    log = json.loads((trained_run / "training.json").read_text())
    assert log["monitor"] == "val_auc" and log["best_epoch_score"] > 0.75
    assert log["per_epoch"] and log["per_epoch"][0]["images_per_s"] > 0
    for name in ("model.pt", "manifest.csv", "config.yaml", "metrics.csv", "environment.json", "data.json"):
        assert (trained_run / name).is_file(), name


def test_checkpoint_round_trip_matches_in_memory(trained_run):
    net, info = load_checkpoint(trained_run / "model.pt")
    cfg = config_from_dict(info.config)
    data = prepare_data(cfg.data, trained_run / "manifest.csv", quiet=True)
    images = data.images("test")[:16]
    predictor = Predictor(net, info)
    direct = predictor.predict_arrays(images)
    paths = data.paths("test")[:16]
    rows, errors = Predictor.from_checkpoint(trained_run).predict(paths)
    assert not errors
    from_files = np.array([[r.probabilities[c] for c in info.classes] for r in rows])
    assert np.allclose(direct, from_files, atol=1e-5)
    assert list(rows[0].row()) == ["path", "prediction", "p_NORMAL", "p_PNEUMONIA", "ood_score", "in_distribution"]


def test_threshold_comes_from_validation(trained_run):
    _, info = load_checkpoint(trained_run)
    log = json.loads((trained_run / "training.json").read_text())
    assert info.threshold_rule == "youden" and 0 < info.threshold < 1
    assert log["threshold"] == info.threshold and "validation" in log["threshold_reason"]


def test_evaluate_writes_metrics_and_plots(trained_run, tmp_path):
    result = evaluate(trained_run, out_dir=tmp_path, bootstrap=200, quiet=True)
    m = result.metrics
    for key in ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc"):
        assert 0 <= m[key] <= 1
        lo, hi = result.ci95[key]
        assert lo <= m[key] <= hi
    assert m["roc_auc"] > 0.7
    assert sum(map(sum, result.confusion_matrix)) == result.n_test == 200
    for name in ("metrics.json", "predictions.csv", "confusion_matrix.png", "roc.png", "pr.png",
                 "reliability.png", "training_curves.png"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_evaluate_refuses_a_different_test_split(trained_run, tmp_path):
    manifest = (trained_run / "manifest.csv").read_text().splitlines()
    test_rows = [i for i, line in enumerate(manifest) if ",test," in line]
    # move one test image into train: the test set no longer matches the model's record
    manifest[test_rows[0]] = manifest[test_rows[0]].replace(",test,", ",train,")
    fake = tmp_path / "run"
    fake.mkdir()
    (fake / "model.pt").write_bytes((trained_run / "model.pt").read_bytes())
    (fake / "manifest.csv").write_text("\n".join(manifest) + "\n")
    with pytest.raises(EvaluationError, match="does not match"):
        evaluate(fake, quiet=True)


def test_wrong_or_damaged_checkpoints(trained_run, tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(empty)
    cut = tmp_path / "cut.pt"
    data = (trained_run / "model.pt").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt.*truncated"):
        load_checkpoint(cut)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a medcls checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_temperature_scaling_does_not_raise_nll():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    logits = ((y * 2 - 1) * 4 + rng.normal(0, 3, 500))[:, None]  # over-confident logits
    t = fit_temperature(logits, y)
    assert t > 1 and nll(logits, y, t) < nll(logits, y, 1.0)


def test_recalibrating_a_finished_run_reproduces_training_then_takes_a_new_rule(trained_run, tmp_path):
    """Training = fit, then calibrate: the calibrate step re-run on the finished run gives the same
    temperature, threshold and OOD detector; another threshold rule changes only the calibration."""
    import dataclasses
    import shutil

    from medcls.api import recalibrate
    from medcls.metrics.classification import binary_metrics
    from medcls.models.inference import batch_logits, logits_to_probs
    from medcls.training.calibrate import CalibrationError

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    net, before = load_checkpoint(run)
    again = recalibrate(run, quiet=True)
    _, after = load_checkpoint(run)
    assert again.threshold == pytest.approx(before.threshold, abs=1e-6)
    assert again.temperature == pytest.approx(before.temperature, rel=1e-5)
    assert after.ood.threshold == pytest.approx(before.ood.threshold, rel=1e-5)

    target = 0.99
    strict = recalibrate(run, threshold_rule="sensitivity", target_sensitivity=target, quiet=True)
    net2, info = load_checkpoint(run)
    assert info.threshold_rule == "sensitivity" and info.threshold == strict.threshold != before.threshold
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    assert dataclasses.replace(info, threshold=0, threshold_rule="", temperature=0, ood=None, config={}) == \
        dataclasses.replace(before, threshold=0, threshold_rule="", temperature=0, ood=None, config={})
    data = prepare_data(config_from_dict(info.config).data, run / "manifest.csv", quiet=True)
    probs = logits_to_probs(batch_logits(net2, data.images("val"), 32, tta=info.tta), info.temperature)[:, 1]
    assert binary_metrics(data.labels["val"], probs, info.threshold)["recall"] >= target
    assert json.loads((run / "training.json").read_text())["threshold"] == info.threshold

    # test-time augmentation switched on for the trained weights: the model predicts with it and its
    # temperature is fitted on the augmented validation logits
    from medcls.metrics.calibration import fit_temperature

    assert not info.tta
    with_tta = recalibrate(run, tta=True, quiet=True)
    net3, info3 = load_checkpoint(run)
    assert info3.tta and config_from_dict(info3.config).eval.tta
    tta_logits = batch_logits(net3, data.images("val"), 32, tta=True)
    assert with_tta.temperature == pytest.approx(fit_temperature(tta_logits, data.labels["val"]), rel=1e-5)
    assert with_tta.temperature != pytest.approx(strict.temperature, rel=1e-5)
    with pytest.raises(CalibrationError, match="not a finished run folder"):
        recalibrate(tmp_path)


def test_stressed_operating_point_pools_validation_with_its_site_shifted_copies(trained_run, tmp_path):
    """``threshold_on=stressed``: temperature and threshold fitted on validation plus its copies under
    the stated site shifts, recorded in the checkpoint; the weights are untouched."""
    import shutil

    from medcls.api import recalibrate
    from medcls.metrics.calibration import fit_temperature
    from medcls.metrics.threshold import choose_threshold
    from medcls.models.inference import batch_logits, logits_to_probs
    from medcls.stress.operating import SITE_SHIFTS
    from medcls.stress.perturbations import PERTURBATIONS

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    _, before = load_checkpoint(run)
    cal = recalibrate(run, threshold_on="stressed", quiet=True)
    net, info = load_checkpoint(run)
    assert config_from_dict(info.config).eval.threshold_on == "stressed"
    assert "zoom_in 0.3" in cal.threshold_reason and info.threshold == cal.threshold != before.threshold

    data = prepare_data(config_from_dict(info.config).data, run / "manifest.csv", quiet=True)
    images, labels = data.images("val"), data.labels["val"]
    copies = [images] + [PERTURBATIONS.get(name)(images, strength, 0) for name, strength in SITE_SHIFTS]
    logits = np.concatenate([batch_logits(net, x, 32, tta=info.tta) for x in copies])
    y = np.tile(labels, len(copies))
    assert len(y) == 8 * len(labels)
    t = fit_temperature(logits, y)
    assert info.temperature == pytest.approx(t, rel=1e-4)
    expected, _ = choose_threshold(y, logits_to_probs(logits, t)[:, 1], "youden")
    assert info.threshold == pytest.approx(expected, abs=1e-6)
