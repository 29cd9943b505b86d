import csv
import io
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import FUNDUS, ROOT, quick_overrides
from medcls.api import evaluate
from medcls.assets import shipped_model
from medcls.cli import main
from medcls.config import AugmentConfig, ConfigError, config_from_dict, load_config
from medcls.data.augment import augmented_copies
from medcls.data.prepared import prepare_data
from medcls.evaluation.evaluate import EvaluationError
from medcls.inference.predictor import Predictor, expand_paths
from medcls.models.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from medcls.models.inference import WithFeatures
from medcls.ood.detector import (
    METHODS,
    OODDetector,
    OODFeatures,
    fit_detector,
    fit_ood,
    logits_and_features,
)
from medcls.ood.probes import (
    SYNTHETIC,
    TRANSFORMS,
    synthetic_images,
    transformed_images,
    write_images,
)

pytestmark = pytest.mark.data  # reads the real data sets directly

COLUMNS = ["path", "prediction", "p_NORMAL", "p_PNEUMONIA", "ood_score", "in_distribution"]


@pytest.fixture(scope="module")
def run_data(trained_run):
    _, info = load_checkpoint(trained_run)
    return prepare_data(config_from_dict(info.config).data, trained_run / "manifest.csv", quiet=True)


@pytest.fixture(scope="module")
def fundus_folder(tmp_path_factory):
    """Eight fundus photographs of each retinopathy grade."""
    folder = tmp_path_factory.mktemp("fundus")
    for grade in sorted(p for p in FUNDUS.iterdir() if p.is_dir()):
        for path in expand_paths([grade])[:8]:
            shutil.copy(path, folder / f"{grade.name.replace(' ', '_')}-{path.name}")
    return folder


@pytest.fixture(scope="module")
def synthetic_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    for kind in SYNTHETIC:
        write_images(synthetic_images(kind, 10, seed=1), folder, kind)
    return folder


def flagged(predictor: Predictor, sources) -> float:
    rows, errors = predictor.predict(list(sources), [str(i) for i in range(len(sources))])
    assert not errors
    return float(np.mean([not r.in_distribution for r in rows]))


def png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_detector_is_stored_and_reloaded_exactly(trained_run, run_data):
    payload = torch.load(trained_run / "model.pt", map_location="cpu", weights_only=True)
    assert payload["format_version"] == FORMAT_VERSION
    state = payload["info"]["ood"]
    assert state["method"] == "mahalanobis-multiscale" and state["flag_rate"] == 0.05
    # seed-cnn at 64 px with "same" padding: channel means at 64, 32, 16, 8, 4 and 2 px, then Dense 64
    assert state["blocks"] == [32, 64, 64, 128, 256, 256, 64] and len(state["gaussians"]) == 7
    assert all(isinstance(g["whitening"], torch.Tensor) and g["means"].shape[0] == 2 for g in state["gaussians"])
    net, info = load_checkpoint(trained_run)
    stored = OODDetector.from_info(info)
    refit = fit_ood(net, run_data.images("train"), run_data.labels["train"], run_data.images("val"))
    assert stored.threshold == pytest.approx(refit.threshold, rel=1e-5)
    for b, g in refit.gaussians.items():
        assert g.scale == pytest.approx(stored.gaussians[b].scale, rel=1e-5)
        assert np.allclose(g.means, stored.gaussians[b].means, rtol=1e-5)


def test_flag_rate_on_in_distribution_data_is_near_target(trained_run, run_data):
    predictor = Predictor.from_checkpoint(trained_run)
    _, val_scores = predictor.outputs(run_data.images("val"))
    assert np.mean(~predictor.ood.in_distribution(val_scores)) == pytest.approx(0.05, abs=0.01)
    _, test_scores = predictor.outputs(run_data.images("test"))
    assert np.mean(~predictor.ood.in_distribution(test_scores)) <= 0.1


def test_fundus_and_synthetic_images_are_flagged(trained_run, fundus_folder):
    predictor = Predictor.from_checkpoint(trained_run)
    assert flagged(predictor, expand_paths([fundus_folder])) >= 0.95
    for kind in SYNTHETIC:
        assert flagged(predictor, [png(im) for im in synthetic_images(kind, 20, seed=2)]) >= 0.95, kind


def test_transformed_xrays_score_higher_than_originals(trained_run, run_data):
    predictor = Predictor.from_checkpoint(trained_run)
    paths = run_data.paths("test")[::10]
    _, original = predictor.outputs(np.stack([predictor.preprocess(p) for p in paths]))
    for kind in TRANSFORMS:
        images = np.stack([predictor.preprocess(png(im)) for im in transformed_images(kind, paths)])
        _, scores = predictor.outputs(images)
        assert np.median(scores) > np.median(original), kind
        if kind != "rotated-180":  # upside down keeps an X-ray's textures: a near set, flagged less
            assert np.mean(~predictor.ood.in_distribution(scores)) >= 0.8, kind


def test_every_score_is_a_function_of_features_and_logits():
    rng = np.random.default_rng(0)
    train_f, val_f = rng.normal(size=(60, 8)), rng.normal(size=(40, 8))
    for method in METHODS:
        d = fit_detector(method, [3, 5], train_f, np.repeat([0, 1], 30), val_f, val_f[:, :1], 0.1)
        scores = d.score(val_f, val_f[:, :1])
        assert scores.shape == (40,) and np.mean(scores > d.threshold) == pytest.approx(0.1, abs=0.03), method
        reloaded = OODDetector.from_state(d.to_state())
        assert reloaded.score(train_f, train_f[:, :1]) == pytest.approx(d.score(train_f, train_f[:, :1]))
    d = fit_detector("mahalanobis-multiscale", [3, 5], train_f, np.repeat([0, 1], 30), val_f, val_f[:, :1], 0.1)
    assert sorted(d.gaussians) == [0, 1]
    with pytest.raises(ValueError, match="expects 8 features per image"):
        d.score(val_f[:, 3:], val_f[:, :1])  # penultimate features only: not what the detector was fitted on


def test_features_hold_each_scale_then_the_penultimate_layer(trained_run):
    net, info = load_checkpoint(trained_run)
    model = OODFeatures(net, info.image_size, info.in_channels)
    x = torch.rand(3, 1, 64, 64)
    z = (x - net.mean) / net.std
    with torch.inference_mode():
        logits, features = model(x)
        assert torch.equal(logits, net(x))
        full = net.backbone[:2](z).mean(dim=(2, 3))  # conv + ReLU at 64 px
        half = net.backbone[:5](z).mean(dim=(2, 3))  # max-pool, conv + ReLU at 32 px
        penultimate = WithFeatures(net)(x)[1]
    assert features.shape == (3, sum(model.blocks))
    assert torch.allclose(features[:, :32], full, atol=1e-6) and torch.allclose(features[:, 32:96], half, atol=1e-6)
    assert torch.allclose(features[:, -64:], penultimate)


def test_prediction_rows_carry_the_flag(trained_run, xray_root):
    xray = xray_root / "test" / "NORMAL" / "IM-0001-0001.jpeg"
    rows, errors = Predictor.from_checkpoint(trained_run).predict(
        [xray, png(synthetic_images("flat", 1)[0])], ["xray", "flat"])
    assert not errors and [list(r.row()) for r in rows] == [COLUMNS, COLUMNS]
    flat = rows[1]
    assert flat.in_distribution is False and flat.ood_score > rows[0].ood_score
    assert flat.probabilities["NORMAL"] + flat.probabilities["PNEUMONIA"] == pytest.approx(1)  # still shown


def test_cli_predict_marks_foreign_images_untrusted(trained_run, synthetic_folder, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    assert main(["predict", str(synthetic_folder / "flat-0000.png"), "-m", str(trained_run), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "WARNING: 1 image(s) do not look like this model's training data" in printed
    assert "untrusted" in printed.replace("\n", "")
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == COLUMNS and rows[0]["in_distribution"] == "False"


def test_evaluate_reports_foreign_folders(trained_run, fundus_folder, synthetic_folder, tmp_path):
    result = evaluate(trained_run, out_dir=tmp_path, bootstrap=0, quiet=True,
                      ood=[fundus_folder, synthetic_folder])
    ood = result.ood
    assert ood["method"] == "mahalanobis-multiscale" and ood["test"]["n"] == result.n_test == 200
    assert ood["test"]["flagged"] <= 0.1
    for folder, n in ((fundus_folder, 40), (synthetic_folder, 40)):
        s = ood["foreign"][str(folder)]
        assert s["n"] == n and s["flagged"] >= 0.95 and s["auroc"] >= 0.98, (folder, s)
    assert json.loads((tmp_path / "metrics.json").read_text())["ood"]["foreign"][str(fundus_folder)] == ood[
        "foreign"][str(fundus_folder)]
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert list(rows[0]) == [*COLUMNS, "label"]
    assert np.mean([r["in_distribution"] == "False" for r in rows]) == pytest.approx(ood["test"]["flagged"])
    # per class and the accuracy either side of the flag, recounted from the predictions file
    for name, c in ood["test"]["by_class"].items():
        mine = [r for r in rows if r["label"] == name]
        assert c["n"] == len(mine) and c["flagged"] == pytest.approx(np.mean([r["in_distribution"] == "False"
                                                                              for r in mine]))
    for key, flag in (("in_distribution", "True"), ("flagged", "False")):
        mine = [r["prediction"] == r["label"] for r in rows if r["in_distribution"] == flag]
        assert ood["test"]["accuracy"][key] == (pytest.approx(np.mean(mine)) if mine else None)


def test_cli_evaluate_ood_errors_are_one_line(trained_run, tmp_path, capsys):
    assert main(["evaluate", str(trained_run), "--out", str(tmp_path), "--ood", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out-of-distribution folder(s) not found" in err[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", str(trained_run), "--out", str(tmp_path), "--bootstrap", "0", "--ood", str(empty)]) == 2
    assert "no readable images in" in capsys.readouterr().err


def test_format_1_checkpoint_loads_with_its_detector(trained_run, tmp_path):
    """Files written before the OOD state was a typed field (``info["extras"]["ood"]``, format 1;
    the shipped model until its detector was refitted) load through the one migration, detector and
    digest intact."""
    import dataclasses

    from medcls.core.io import atomic_torch_save
    from medcls.models.checkpoint import content_digest

    payload = torch.load(trained_run / "model.pt", map_location="cpu", weights_only=True)
    info = dict(payload["info"])
    info["extras"] = {"ood": info.pop("ood")}
    old = {**payload, "format_version": 1, "info": info}
    old["sha256"] = content_digest({"info": old["info"], "state_dict": old["state_dict"]})
    atomic_torch_save(old, tmp_path / "model.pt")
    _, migrated = load_checkpoint(tmp_path / "model.pt")
    _, today = load_checkpoint(trained_run)
    assert dataclasses.replace(migrated, ood=None) == dataclasses.replace(today, ood=None)
    assert OODDetector.from_info(migrated).threshold == OODDetector.from_info(today).threshold
    assert load_checkpoint(shipped_model())[1].ood is not None


def test_model_without_detector_still_predicts(trained_run, tmp_path):
    net, info = load_checkpoint(trained_run)
    info.ood = None
    old = save_checkpoint(tmp_path / "model.pt", net, info)
    rows, _ = Predictor.from_checkpoint(old).predict([png(synthetic_images("flat", 1)[0])])
    assert list(rows[0].row()) == COLUMNS and rows[0].ood_score is None and rows[0].in_distribution is None
    with pytest.raises(EvaluationError, match="no out-of-distribution detector"):
        evaluate(old, ood=[tmp_path])


def test_flag_rate_config_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="eval.ood_flag_rate"):
        load_config(ROOT / "configs" / "pneumonia-quick.yaml", [*quick_overrides(tmp_path), "eval.ood_flag_rate=0.9"])
    with pytest.raises(ConfigError, match="eval.ood_method"):
        load_config(None, ["eval.ood_method=knn"])


def test_detector_fitted_with_augmented_copies(trained_run, run_data):
    """``eval.ood_augmented``: the Gaussians also see one augmented copy of each training image
    (seeded: the same copies every time, and the caller's random stream is left alone)."""
    net, info = load_checkpoint(trained_run)
    train, labels, val = run_data.images("train"), run_data.labels["train"], run_data.images("val")
    augment = AugmentConfig(rotation=10, shift=0.1, zoom=0.1, brightness=0.1, contrast=0.1)
    state = torch.random.get_rng_state()
    copies = augmented_copies(train[:16], augment)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert copies.dtype == np.uint8 and copies.shape == train[:16].shape
    assert np.array_equal(copies, augmented_copies(train[:16], augment))
    assert np.abs(copies.astype(int) - train[:16]).mean() > 1  # really moved
    detector = fit_ood(net, train, labels, val, 0.05, augment=augment)
    assert detector.augmented and not fit_ood(net, train, labels, val, 0.05).augmented
    again = OODDetector.from_state(detector.to_state())
    assert again.augmented and again.threshold == detector.threshold
    model = OODFeatures(net, info.image_size, info.in_channels)
    logits, features = logits_and_features(model, val)
    assert np.mean(detector.score(features, logits) > detector.threshold) == pytest.approx(0.05, abs=0.03)
