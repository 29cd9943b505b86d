"""Shared fixtures: the real data sets from ../shared/data (subsets, small sizes),
a private decode cache, and one short trained model reused by several tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDCLS_TEST_DATA", ROOT.parent / "shared" / "data")).resolve()
XRAY = DATA / "chest_xray"
FUNDUS = DATA / "retinopathy"


# Fixtures that train a model (tens of seconds each, once per session): their tests are "slow".
TRAINED = {"trained_run", "valid_padding_run", "trained_onnx", "fundus_run", "uninterrupted"}
NO_DATA = f"test data not found at {DATA} (put the data sets in ../shared/data or set MEDCLS_TEST_DATA)"


def pytest_collection_modifyitems(config, items):
    """Lanes: tests on trained models are ``slow`` (and need ``data``); without the data sets,
    the ``data`` tests are skipped with the reason instead of failing."""
    for item in items:
        if TRAINED & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
        if TRAINED & set(item.fixturenames) or {"xray_root", "fundus_root"} & set(item.fixturenames):
            item.add_marker(pytest.mark.data)
        if item.get_closest_marker("data") and not (XRAY.is_dir() and FUNDUS.is_dir()):
            item.add_marker(pytest.mark.skip(reason=NO_DATA))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    os.environ["MEDCLS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(scope="session")
def xray_root() -> Path:
    if not XRAY.is_dir():
        pytest.skip(NO_DATA)
    return XRAY


def quick_overrides(out_dir: Path, root: Path = XRAY, limit: int = 100, size: int = 64, epochs: int = 3) -> list[str]:
    """A run small enough for the test suite: few images, small size, few epochs."""
    return [f"data.root={root}", f"data.limit_per_class={limit}", f"data.image_size={size}",
            "model.kwargs.padding=same", f"train.epochs={epochs}", "train.early_stopping_patience=0",
            f"output_dir={out_dir}", "eval.bootstrap=200", "augment.rotation=5",
            "eval.stress_limit=8",  # evaluate's stress test on 8 validation images per class: seconds, not minutes
            # the operating point on validation alone: eight times fewer passes; the stressed fit has its own test
            "eval.threshold_on=validation",
            # no random resized crops: at 64 px, 200 images and 3 epochs they leave validation AUC near 0.67
            # (the preset needs its 14 epochs); the crops have their own tests
            "augment.crop_scale=1.0", "augment.crop_aspect=0"]


def assert_switch_keeps_weights(out_dir: Path, root: Path, switch: str, size: int) -> None:
    """Train the same seed twice in bf16, with the config switch ``switch`` on and off, and
    assert bit-identical weights: for speed switches that must not change a number."""
    import torch

    from medcls.config import load_config
    from medcls.models.checkpoint import load_checkpoint
    from medcls.training.train import train

    weights = []
    for value in ("true", "false"):
        cfg = load_config(ROOT / "configs" / "pneumonia-quick.yaml",
                          quick_overrides(out_dir / value, root, limit=40, size=size, epochs=2)
                          + ["train.precision=bf16-mixed", f"{switch}={value}"])
        weights.append(load_checkpoint(train(cfg, quiet=True))[0].state_dict())
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, xray_root) -> Path:
    """A short seed-CNN run on a real chest X-ray subset (64 px), trained once per session."""
    from medcls.config import load_config
    from medcls.training.train import train

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(ROOT / "configs" / "pneumonia-quick.yaml", quick_overrides(out))
    return train(cfg, quiet=True)


@pytest.fixture(scope="session")
def valid_padding_run(tmp_path_factory, xray_root) -> Path:
    """A short seed-CNN run with the recipe's "valid" padding (96 px): a first stage that the
    fused kernels (medcls.models.fused) run, in training and in compiled inference."""
    from medcls.config import load_config
    from medcls.training.train import train

    out = tmp_path_factory.mktemp("valid-runs")
    cfg = load_config(ROOT / "configs" / "pneumonia-quick.yaml",
                      quick_overrides(out, limit=40, size=96, epochs=1) + ["model.kwargs.padding=valid"])
    return train(cfg, quiet=True)


@pytest.fixture(scope="session")
def trained_onnx(trained_run) -> Path:
    """The ``trained_run`` model exported to ONNX (the export verifies it against PyTorch)."""
    from medcls.inference.export import export_onnx

    return export_onnx(trained_run, trained_run / "model.onnx").path


@pytest.fixture(scope="session")
def fundus_run(tmp_path_factory) -> Path:
    """A one-epoch 5-grade seed-CNN run on a real retinopathy subset (64 px RGB)."""
    from medcls.config import load_config
    from medcls.training.train import train

    if not FUNDUS.is_dir():
        pytest.skip(NO_DATA)
    out = tmp_path_factory.mktemp("fundus-runs")
    cfg = load_config(None, quick_overrides(out, FUNDUS, limit=16, epochs=1) + ["data.dataset=retinopathy"])
    return train(cfg, quiet=True)
