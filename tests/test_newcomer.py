"""A newcomer's first hour (issue 19): the natural first commands work or fail in one clear line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medcls.cli import main


def _first_image(root, split="test", label="NORMAL"):
    return sorted((root / split / label).iterdir())[0]


def test_predict_explain_without_model_uses_the_shipped_one(xray_root, tmp_path, capsys):
    image = _first_image(xray_root)
    assert main(["predict", str(image), "--explain", str(tmp_path)]) == 0
    [png] = tmp_path.iterdir()
    with Image.open(png) as im:
        assert im.size[0] >= Image.open(image).size[0]  # the overlay at the image's size, plus its colour bar
        assert np.asarray(im.convert("RGB")).std() > 10  # a picture, not a blank
    assert "1 heat-map overlay(s)" in capsys.readouterr().out


def test_predict_explain_with_onnx_says_it_needs_the_checkpoint(trained_onnx, xray_root, tmp_path, capsys):
    code = main(["predict", str(_first_image(xray_root)), "-m", str(trained_onnx), "--explain", str(tmp_path / "h"),
                 "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "heat maps need the .pt checkpoint" in err[0]
    assert not (tmp_path / "p.csv").exists()  # refused before any work


def _copy_classes(src, dst, classes, n=3):
    """A tiny real data set: the first ``n`` images of each class folder of ``src``."""
    import shutil

    for name in classes:
        (dst / name).mkdir(parents=True)
        for f in sorted((src / name).iterdir())[:n]:
            shutil.copy(f, dst / name / f.name)
    return dst


@pytest.fixture
def tiny_fundus(tmp_path):
    from conftest import FUNDUS
    from medcls.data.datasets import RETINOPATHY_GRADES

    if not FUNDUS.is_dir():
        pytest.skip("no retinopathy data")
    return _copy_classes(FUNDUS, tmp_path / "fundus", RETINOPATHY_GRADES)


def test_inspect_and_audit_detect_the_data_set(tiny_fundus, xray_root, tmp_path, capsys):
    from medcls.data.datasets import RETINOPATHY_GRADES, detect_dataset

    assert main(["inspect", str(tiny_fundus), "--no-audit", "--out", str(tmp_path / "i")]) == 0
    info = json.loads((tmp_path / "i" / "inspection.json").read_text())
    assert info["dataset"] == "retinopathy" and info["classes"] == RETINOPATHY_GRADES  # clinical order, not sorted
    assert main(["audit", str(tiny_fundus), "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "audit.json").read_text())["dataset"] == "retinopathy"
    assert detect_dataset(xray_root) == "pneumonia"
    other = _copy_classes(tiny_fundus, tmp_path / "other", ["Healthy", "Mild DR"], n=2)
    assert detect_dataset(other) == "class-folders"
    capsys.readouterr()
    assert main(["inspect", str(tiny_fundus), "--dataset", "pneumonia", "--no-audit", "--out", str(tmp_path / "x")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "do not match data set 'pneumonia'" in line and line.endswith("fits --dataset retinopathy")


def test_presets_load_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    from conftest import ROOT
    from medcls.config import ConfigError, load_config, preset_names

    assert {"pneumonia-quick", "pneumonia-compact", "retinopathy-compact"} <= set(preset_names())
    from_file = load_config(ROOT / "configs" / "pneumonia-compact.yaml")
    monkeypatch.chdir(tmp_path)  # not the repository: the presets come from the package
    assert load_config("pneumonia-compact") == from_file == load_config("pneumonia-compact.yaml")
    with pytest.raises(ConfigError, match="preset name: .*pneumonia-quick"):
        load_config("pneumonia-fast")
    monkeypatch.delenv("MEDCLS_DATA", raising=False)  # the default root, relative to this empty folder
    assert main(["train", "-c", "pneumonia-quick", "--set", f"output_dir={tmp_path / 'runs'}"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "data folder not found: ../shared/data/chest_xray" in line and "--data DIR" in line and "MEDCLS_DATA" in line
    assert not (tmp_path / "runs").exists()
    assert main(["run", "-c", "retinopathy-compact", "--set", f"output_dir={tmp_path / 'runs'}"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "../shared/data/retinopathy" in line and "--data DIR" in line and "MEDCLS_DATA" not in line
    assert not (tmp_path / "runs").exists()


def test_print_config_lists_every_key_and_loads_back(tmp_path, capsys):
    import yaml

    from medcls.config import load_config
    from medcls.config.schema import config_from_dict

    assert main(["train", "-c", "pneumonia-quick", "--set", "train.lr=0.01", "--print-config"]) == 0
    text = capsys.readouterr().out
    cfg = load_config("pneumonia-quick", ["train.lr=0.01"])
    assert config_from_dict(yaml.safe_load(text)) == cfg  # a complete preset, as given
    lines = {line.split(":")[0].strip(): line for line in text.splitlines() if "  # " in line and not line.startswith("#")}
    assert "default 0.001" in lines["lr"] and "in [1e-12, 10.0]" in lines["lr"]
    assert "one of" in lines["arch"] and "resnet18" in lines["arch"] and "retinopathy" in lines["dataset"]
    assert "one of adam, adamw, sgd" in lines["optimizer"] and "default" not in lines["optimizer"]
    n_keys = sum(len(vars(getattr(cfg, s))) for s in ("data", "augment", "model", "train", "eval")) + 2
    assert len(lines) == n_keys


def test_training_refuses_a_run_folder_that_holds_files(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(b"an earlier model")
    for command in ("train", "run"):
        assert main([command, "-c", "pneumonia-quick", "--run-dir", str(run), "--data", str(tmp_path)]) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert f"run folder {run} is not empty" in line and "--force" in line
    assert (run / "model.pt").read_bytes() == b"an earlier model" and len(list(run.iterdir())) == 1


@pytest.mark.slow
def test_run_into_a_named_folder_then_train_over_it_with_force(xray_root, tmp_path, capsys):
    from conftest import quick_overrides

    run = tmp_path / "run"
    sets = [x for o in quick_overrides(tmp_path / "runs", limit=12, epochs=1) for x in ("--set", o)]
    assert main(["run", "-c", "pneumonia-quick", "--run-dir", str(run), *sets]) == 0
    assert (run / "model.pt").is_file() and (run / "inspection" / "inspection.json").is_file()
    assert not (tmp_path / "runs").exists()  # the named folder, not a new timestamped one
    first = (run / "model.pt").read_bytes()
    assert main(["train", "-c", "pneumonia-quick", "--run-dir", str(run), *sets]) == 2
    assert (run / "model.pt").read_bytes() == first
    capsys.readouterr()
    assert main(["train", "-c", "pneumonia-quick", "--run-dir", str(run), "--force", *sets,
                 "--set", "train.seed=1"]) == 0
    assert (run / "model.pt").read_bytes() != first
