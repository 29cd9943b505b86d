"""The ``knn-grid`` out-of-distribution score (near foreign inputs, #21 item 4) on a real model
and real X-rays: it flags a planted shift, its threshold is the validation quantile, it round-trips
through the checkpoint, and ``refit_ood`` refits only the detector of a saved model."""

import shutil

import numpy as np
import pytest
import torch

from medcls.api import refit_ood
from medcls.config import config_from_dict
from medcls.data.prepared import prepare_data
from medcls.inference.predictor import Predictor
from medcls.models.checkpoint import load_checkpoint, save_checkpoint
from medcls.ood.detector import OODDetector, fit_ood
from medcls.ood.features import OODFeatures, logits_and_features
from medcls.training.calibrate import CalibrationError

pytestmark = pytest.mark.data  # reads the real data sets directly


@pytest.fixture(scope="module")
def fitted(trained_run):
    """The trained run's network, data and a ``knn-grid`` detector flagging 10% of validation."""
    net, info = load_checkpoint(trained_run)
    data = prepare_data(config_from_dict(info.config).data, trained_run / "manifest.csv", quiet=True)
    detector = fit_ood(net, data.images("train"), data.labels["train"], data.images("val"), 0.1, method="knn-grid")
    return net, info, data, detector


def scores(net, info, detector, images):
    with OODFeatures(net, info.image_size, info.in_channels, grid=detector.grid) as model:
        logits, features = logits_and_features(model, images)
    return detector.score(features, logits)


def test_threshold_is_the_validation_quantile(fitted):
    net, info, data, detector = fitted
    assert detector.method == "knn-grid" and detector.grid == 4 and not detector.gaussians
    # 4 x 4 cell means of each scale, then the penultimate features; the early scales are read
    with OODFeatures(net, info.image_size, info.in_channels) as plain:
        pass
    assert detector.blocks == [16 * b for b in plain.blocks[:-1]] + plain.blocks[-1:]
    assert detector.neighbours.blocks == list(range(len(detector.blocks) - 2))
    val = scores(net, info, detector, data.images("val"))
    assert detector.threshold == pytest.approx(np.quantile(val, 0.9))
    assert np.mean(val > detector.threshold) == pytest.approx(0.1, abs=1 / len(val) + 1e-9)


def test_a_planted_shift_is_flagged(fitted):
    """Validation X-rays with a white band over their top quarter (a label or a figure border, as on
    X-rays from other hospitals), and moved down by a quarter: the layout changes, not the textures."""
    net, info, data, detector = fitted
    val = data.images("val")
    quarter = val.shape[1] // 4
    banded = val.copy()
    banded[:, :quarter] = 255
    moved = np.zeros_like(val)
    moved[:, quarter:] = val[:, :-quarter]
    in_distribution = scores(net, info, detector, val)
    for planted in (banded, moved):
        shifted = scores(net, info, detector, planted)
        assert np.mean(shifted > detector.threshold) >= 0.9
        assert np.median(shifted) > np.quantile(in_distribution, 0.95)


def test_detector_round_trips_through_the_checkpoint(fitted, tmp_path):
    net, info, data, detector = fitted
    info.ood = detector.to_state()
    path = save_checkpoint(tmp_path / "model.pt", net, info)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    state = payload["info"]["ood"]
    assert state["grid"] == 4 and isinstance(state["neighbours"]["reference"], torch.Tensor)
    reloaded = OODDetector.from_info(load_checkpoint(path)[1])
    images = data.images("test")[:16]
    _, served = Predictor.from_checkpoint(path).outputs(images)  # the backend pools over the stored grid
    assert served == pytest.approx(scores(net, info, detector, images), rel=1e-4, abs=1e-5)
    assert reloaded.threshold == detector.threshold


def test_refit_ood_changes_only_the_detector(trained_run, tmp_path):
    shutil.copytree(trained_run, tmp_path / "run")
    model = tmp_path / "run" / "model.pt"
    with pytest.raises(CalibrationError, match="unknown OOD method"):
        refit_ood(model, "nearest")
    state = refit_ood(model, "knn-grid", out=tmp_path / "refit.pt", quiet=True)
    net, before = load_checkpoint(model)
    refit_net, after = load_checkpoint(tmp_path / "refit.pt")
    assert state.method == after.ood.method == "knn-grid" and after.config["eval"]["ood_method"] == "knn-grid"
    assert (after.threshold, after.temperature) == (before.threshold, before.temperature)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), refit_net.state_dict().values()))
    assert after.ood.flag_rate == before.ood.flag_rate
