import csv
import json
import subprocess
import sys

import pytest

from conftest import ROOT, quick_overrides
from medcls.cli import main


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The real console command, in a subprocess (exit code and stderr as a user sees them)."""
    return subprocess.run([sys.executable, "-m", "medcls.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_inspect(xray_root, tmp_path):
    assert main(["inspect", str(xray_root), "--out", str(tmp_path)]) == 0
    info = json.loads((tmp_path / "inspection.json").read_text())
    assert info["counts"]["train"] == {"NORMAL": 1341, "PNEUMONIA": 3875}
    assert info["imbalance_ratio"]["train"] > 2.8 and info["modes"] == {"RGB": 5840}
    assert (tmp_path / "samples.png").stat().st_size > 10_000


@pytest.mark.slow
def test_run_then_predict(xray_root, tmp_path, capsys):
    sets = [x for o in quick_overrides(tmp_path / "runs", limit=40, epochs=1) for x in ("--set", o)]
    assert main(["run", "--config", str(ROOT / "configs" / "pneumonia-quick.yaml"), *sets]) == 0
    out = capsys.readouterr().out
    assert "test metrics: accuracy" in out
    run = next((tmp_path / "runs").iterdir())
    for name in ("model.pt", "metrics.json", "predictions.csv", "inspection/samples.png", "training_curves.png"):
        assert (run / name).is_file(), name
    target = tmp_path / "pred.csv"
    folder = xray_root / "test" / "NORMAL"
    assert main(["predict", str(folder), "--model", str(run / "model.pt"), "--out", str(target)]) == 0
    rows = list(csv.DictReader(target.open()))
    assert len(rows) == 234 and list(rows[0])[:4] == ["path", "prediction", "p_NORMAL", "p_PNEUMONIA"]
    assert all(r["prediction"] in ("NORMAL", "PNEUMONIA") for r in rows)
    assert all(abs(float(r["p_NORMAL"]) + float(r["p_PNEUMONIA"]) - 1) < 1e-4 for r in rows)
    json_out = tmp_path / "pred.json"
    assert main(["predict", str(folder / "IM-0001-0001.jpeg"), "-m", str(run), "-o", str(json_out)]) == 0
    assert json.loads(json_out.read_text())[0]["path"].endswith("IM-0001-0001.jpeg")


def test_clear_one_line_errors(tmp_path, trained_run):
    cases = [
        (["inspect", str(tmp_path / "missing")], "data folder not found"),
        (["train", "--set", "train.epocs=2"], "unknown config key 'train.epocs'"),
        (["evaluate", str(tmp_path / "no-run")], "checkpoint not found"),
        (["predict", str(tmp_path / "nothing.png"), "-m", str(trained_run)], "no such file or folder"),
        (["train", "--set", "model.arch=resnet99"], "unknown architecture 'resnet99'"),
    ]
    not_model = tmp_path / "model.pt"
    not_model.write_text("hello")
    cases.append((["predict", str(not_model), "-m", str(not_model)], "not a readable checkpoint"))
    for args, message in cases:
        res = _cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, res.stderr)
        assert "Traceback" not in res.stderr


def test_predict_reports_unreadable_files(trained_run, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    res = _cli("predict", str(tmp_path / "broken.png"), "-m", str(trained_run))
    assert res.returncode == 2 and "broken.png" in res.stderr and "Traceback" not in res.stderr


def test_every_command_is_a_public_function():
    """Library first, CLI thin: each command has a function of the same name in medcls.api, exported by
    ``import medcls`` (which stays light: torch loads on first use)."""
    import inspect as pyinspect

    import medcls
    from medcls import api
    from medcls.cli import build_parser

    # a command's words are joined by hyphens, its function's by underscores (refit-ood: refit_ood)
    commands = {c.replace("-", "_") for c in build_parser()._subparsers._group_actions[0].choices}
    functions = {name for name, f in vars(api).items() if pyinspect.isfunction(f) and f.__module__ == api.__name__}
    assert commands <= functions and functions <= set(medcls.__all__)
    code = "import sys, medcls; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
