"""The model shipped in the package: it loads, and on the Kermany test split it
reproduces the figures its model card states (inference only)."""

import json

import numpy as np
import pytest

from conftest import ROOT
from medcls.assets import shipped_model
from medcls.data.datasets import load_index
from medcls.inference.predictor import Predictor

CARD = ROOT / "benchmarks" / "results" / "shipped_model.json"


@pytest.mark.slow
def test_shipped_model_reproduces_its_card(xray_root):
    card = json.loads(CARD.read_text())
    predictor = Predictor.load(shipped_model())
    assert predictor.info.classes == ["NORMAL", "PNEUMONIA"]
    test = [s for s in load_index("pneumonia", xray_root).samples if s.given_split == "test"]
    rows, errors = predictor.predict([s.path for s in test])
    assert not errors and len(rows) == 624
    pred = np.array([predictor.info.classes.index(r.prediction) for r in rows])
    y = np.array([s.label for s in test])
    accuracy = float((pred == y).mean())
    assert abs(accuracy - card["metrics"]["accuracy"]) < 0.005
    lo, hi = card["ci95"]["accuracy"]
    assert lo <= accuracy <= hi
    # the out-of-distribution flag ships with it and flags what the card says of the test split
    flagged = np.mean([not r.in_distribution for r in rows])
    assert abs(flagged - card["ood"]["test"]["flagged"]) < 0.005
