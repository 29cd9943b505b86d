"""A newcomer's first hour (issue 19): the natural first commands work or fail in one clear line."""

from __future__ import annotations

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
