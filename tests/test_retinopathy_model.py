"""The shipped retinopathy model (#17 item 5): ``--model retinopathy`` grades real fundus photographs
in five grades, its file holds float16 weights loaded into float32, and the frozen test split
written as CSV is the one the model records."""

import csv

import pytest
import torch

from conftest import FUNDUS, ROOT
from medcls.assets import resolve_model, shipped_model
from medcls.cli import main
from medcls.data.datasets import RETINOPATHY_GRADES, load_index
from medcls.data.split import split_digest
from medcls.inference.predictor import Predictor
from medcls.models.checkpoint import CheckpointError, load_checkpoint

pytestmark = pytest.mark.data  # reads the real fundus photographs
TEST_CSV = ROOT / "benchmarks" / "results" / "retinopathy-test.csv"


def test_shipped_models_by_name():
    assert resolve_model(None) == shipped_model() == shipped_model("pneumonia")
    assert resolve_model("retinopathy") == shipped_model("retinopathy") != shipped_model()
    assert resolve_model("runs/x/model.pt").as_posix() == "runs/x/model.pt"
    with pytest.raises(CheckpointError, match="no shipped model called 'nope' .*pneumonia, retinopathy"):
        shipped_model("nope")
    net, info = load_checkpoint(shipped_model("retinopathy"))
    assert info.classes == RETINOPATHY_GRADES and info.ordinal and info.cutpoints is not None
    assert all(p.dtype == torch.float32 for p in net.parameters())  # stored as float16, run in float32
    stored = torch.load(shipped_model("retinopathy"), map_location="cpu", weights_only=True)["state_dict"]
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}


def test_predict_grades_real_fundus_photographs(tmp_path):
    """``medcls predict --model retinopathy``: one row per image, a probability per grade, a grade
    decided by the model's cut-points; the same as the model file's predictor gives."""
    images = [sorted((FUNDUS / grade).iterdir())[0] for grade in RETINOPATHY_GRADES]
    out = tmp_path / "grades.csv"
    assert main(["predict", *map(str, images), "--model", "retinopathy", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5 and {f"p_{g}" for g in RETINOPATHY_GRADES} <= set(rows[0])
    assert all(r["prediction"] in RETINOPATHY_GRADES for r in rows)
    for r in rows:
        assert sum(float(r[f"p_{g}"]) for g in RETINOPATHY_GRADES) == pytest.approx(1, abs=1e-4)
    want, _ = Predictor.load(shipped_model("retinopathy")).predict(images)
    assert [r["prediction"] for r in rows] == [p.prediction for p in want]


def test_frozen_test_split_csv_is_the_models():
    """benchmarks/results/retinopathy-test.csv: paths relative to the data root with their grades,
    exactly the test split whose digest the shipped model carries."""
    index = load_index("retinopathy", FUNDUS)
    by_rel = {s.path.relative_to(index.root).as_posix(): s for s in index.samples}
    rows = list(csv.DictReader(TEST_CSV.open()))
    assert list(rows[0]) == ["path", "label"] and len({r["path"] for r in rows}) == len(rows)
    samples = [by_rel[r["path"]] for r in rows]
    assert [s.label for s in samples] == [int(r["label"]) for r in rows]
    _, info = load_checkpoint(shipped_model("retinopathy"))
    assert split_digest(index, {"test": samples}) == info.test_digest
