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


def _printed_at_80(monkeypatch, capsys, *argv) -> list[str]:
    """Lines that a command prints on an 80-column terminal."""
    monkeypatch.setenv("COLUMNS", "80")
    capsys.readouterr()
    assert main(list(argv)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and max(len(line) for line in lines) <= 80
    return lines


def test_predict_table_fits_80_columns_with_whole_names(xray_root, monkeypatch, capsys):
    images = [sorted((xray_root / "test" / c).iterdir())[0] for c in ("NORMAL", "PNEUMONIA")]
    text = "\n".join(_printed_at_80(monkeypatch, capsys, "predict", *map(str, images)))
    assert f"images in {xray_root / 'test'}/" in text  # the shared folder once, in the title
    for image in images:
        assert f"{image.parent.name}/{image.name}" in text  # each path whole, relative to it
    assert "NORMAL" in text and "PNEUMONIA" in text and "…" not in text


@pytest.mark.slow
def test_five_class_and_compare_tables_fit_80_columns(fundus_run, trained_run, tiny_fundus, monkeypatch, capsys):
    import re

    from medcls.data.datasets import RETINOPATHY_GRADES

    text = "\n".join(_printed_at_80(monkeypatch, capsys, "predict", str(tiny_fundus / "Moderate DR"), "-m", str(fundus_run)))
    headers = " ".join(text.split("─")[0].split())  # the header block, its wrapped lines joined
    for grade in RETINOPATHY_GRADES:  # one column per grade, named by it (a long name wraps, never cut)
        assert all(word in headers for word in grade.split())
    assert re.search(r"^\S+\.jpg\s+(Healthy|Mild DR|Moderate|Severe|Proliferate)", text, re.M)
    lines = _printed_at_80(monkeypatch, capsys, "compare", str(trained_run), str(fundus_run))
    text = "\n".join(lines)
    assert trained_run.name in text and fundus_run.name in text and "…" not in text
    [fit] = [line for line in lines if line.startswith("fit time")]
    shown = re.findall(r"(\d+(?:\.\d)?) (s|min)\b", fit)
    for (value, unit), run in zip(shown, (trained_run, fundus_run), strict=True):
        seconds = json.loads((run / "training.json").read_text())["fit_seconds"]
        assert unit == ("s" if seconds < 60 else "min")  # seconds under a minute, not "0.0000" minutes
        assert abs(float(value) * (1 if unit == "s" else 60) - seconds) <= (1 if unit == "s" else 3)


def _events_by_task(events) -> dict:
    by_task = {}
    for e in events:
        by_task.setdefault(e.description, []).append(e)
    for seen in by_task.values():
        assert [e.done for e in seen] == sorted(e.done for e in seen)  # it only moves forward
        assert seen[-1].finished and seen[-1].done == seen[-1].total and all(not e.finished for e in seen[:-1])
    return by_task


def test_long_work_reports_progress_and_the_cli_draws_it(tiny_fundus, tmp_path):
    import io

    from rich.console import Console

    from medcls.api import audit
    from medcls.console import ProgressBars
    from medcls.core.progress import reporting

    events = []
    with reporting(events.append):
        audit(tiny_fundus, out=tmp_path / "a")
    assert len(_events_by_task(events)["hashing 15 images"]) == 17  # start, one per image, end
    terminal = io.StringIO()
    bars = ProgressBars(Console(file=terminal, force_terminal=True, width=80))
    for e in events:
        bars(e)
    assert "hashing 15 images" in terminal.getvalue()
    assert bars._live is None  # every task ended: the display is gone, the next one (Lightning's) may start
    events.clear()
    audit(tiny_fundus, out=tmp_path / "b")  # no listener: nothing is reported, nothing printed
    assert not events


def test_a_large_prediction_reports_its_progress(trained_run, xray_root):
    from medcls.api import predict
    from medcls.core.progress import reporting

    files = sorted((xray_root / "test" / "PNEUMONIA").iterdir())[:300]
    events = []
    with reporting(events.append):
        rows, errors = predict(files, model=trained_run)
        assert len(rows) == 300 and not errors
        by_task = _events_by_task(events)
        assert by_task["reading 300 images"][-1].done == by_task["running the model on 300 images"][-1].done == 300
        events.clear()
        predict(files[:10], model=trained_run)  # a few images (a page request's): no bars
        assert not events


@pytest.mark.slow
def test_training_output_is_quiet_unless_verbose(xray_root, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT, quick_overrides

    # PyTorch's ops: the fused kernels' one-off build (a shared build folder, locked while one builds) is not under test
    overrides = quick_overrides(tmp_path / "runs", limit=12, epochs=1) + ["train.fuse_relu_maxpool=false",
                                                                          "train.fuse_first_conv=false"]
    sets = [x for o in overrides for x in ("--set", o)]
    noise = ("GPU available", "litlogger", "Total FLOPs", "Epoch 0/0")
    for verbose in ([], ["-v"]):
        res = subprocess.run([sys.executable, "-m", "medcls.cli", "train", *verbose, "-c", "pneumonia-quick", *sets],
                             capture_output=True, text=True, cwd=ROOT)
        assert res.returncode == 0, res.stderr
        shown = [n for n in noise if n in res.stdout + res.stderr]
        assert shown == ([] if not verbose else ["GPU available", "litlogger", "Total FLOPs"]), (verbose, shown)


def test_api_docs_load_without_internet():
    """/docs and /redoc reference only the server's own files (air-gapped networks), and it serves them."""
    import re

    from medcls.serving.server import load_app
    from test_serve import thread_server

    with thread_server(load_app()) as c:
        for page, script in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
            html = c.get(page).text
            urls = re.findall(r'(?:src|href)="([^"]+)"|url: ?[\'"]([^\'"]+)', html)
            urls = [u for pair in urls for u in pair if u]
            assert urls and not [u for u in urls if u.startswith(("http:", "https:", "//"))], (page, urls)
            [js] = [u for u in urls if u.endswith(script)]
            asset = c.get(js)
            assert asset.status_code == 200 and len(asset.content) > 100_000
        assert c.get("/openapi.json").json()["info"]["title"] == "medcls"
