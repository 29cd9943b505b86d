import json
import re
import shutil

import html5lib
import numpy as np
import pytest
from PIL import Image

from medcls.api import evaluate
from medcls.cli import main
from medcls.evaluation.result import EvaluationResult
from medcls.evaluation.verdict import verdict

SECTIONS = {  # id -> heading: every part the report must have
    "verdict": "Verdict", "data": "Data summary and split", "training": "Training curves", "metrics": "Test metrics",
    "confusion-matrix": "Confusion matrix", "roc-pr": "ROC and precision-recall curves",
    "calibration": "Reliability diagram", "per-class": "Per-class results", "operating-point": "Operating point",
    "errors": "Most confident errors, with Grad-CAM++", "shortcut-check": "Shortcut check",
    "config": "Run configuration",
}
NS = {"h": "http://www.w3.org/1999/xhtml"}


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium not found: scripts/install.sh VENV test installs the Debian package")
    return path


def parse_strict(text: str):
    """html5lib in strict mode raises on any parse error of the HTML standard."""
    return html5lib.HTMLParser(strict=True, namespaceHTMLElements=True).parse(text)


def check_page(html_path, method: str = "Grad-CAM++"):
    """The report as a document: valid HTML, every section with its heading (the errors' names the
    heat-map method), images inline only."""
    text = html_path.read_text()
    doc = parse_strict(text)
    for section_id, heading in {**SECTIONS, "errors": f"Most confident errors, with {method}"}.items():
        section = doc.find(f".//h:section[@id='{section_id}']", NS)
        assert section is not None, section_id
        assert section.find("h:h2", NS).text == heading
    images = doc.findall(".//h:img", NS)
    assert images and all(img.get("src").startswith("data:image/png;base64,") for img in images)
    assert not re.search(r"(src|href)=\"(https?:)?//", text)  # nothing fetched from a network
    return doc, images


def render_in_chromium(html_path, shot_path) -> list:
    """Open the file in headless Chromium; return [complete, naturalWidth] per <img>, save a screenshot."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 2000})
            page.goto(html_path.resolve().as_uri(), wait_until="load")
            loaded = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
            page.screenshot(path=str(shot_path), full_page=True)
        finally:
            browser.close()
    return loaded


@pytest.fixture(scope="module")
def binary_eval(trained_run, tmp_path_factory):
    """The trained chest X-ray run, evaluated once (which writes the report)."""
    out = tmp_path_factory.mktemp("eval")
    return out, evaluate(trained_run, out_dir=out, bootstrap=50, quiet=True)


@pytest.mark.browser
def test_binary_report(binary_eval, tmp_path):
    out, result = binary_eval
    html = out / "report.html"
    doc, images = check_page(html)
    text = html.read_text()
    for needle in ("False positives (true NORMAL, predicted PNEUMONIA)", "False negatives (true PNEUMONIA, predicted NORMAL)",
                   "Youden", "roc_auc", "p(PNEUMONIA) &ge;", "central box", "arch: seed-cnn",
                   "Sensitivity (recall)", "Specificity", verdict(result).headline):
        assert needle in text, needle
    assert doc.find(".//h:section[@id='verdict']", NS) is not None
    (_, fp), (fn, _) = result.confusion_matrix
    shown = min(fp, 6) + min(fn, 6)  # the six most confident of each kind
    assert shown > 0 and len(doc.findall(".//h:section[@id='errors']//h:img", NS)) == shown
    assert len(list((out / "gradcam").glob("*.gradcampp.png"))) == shown
    shortcut = json.loads((out / "metrics.json").read_text())["shortcut_check"]
    assert shortcut == json.loads((out / "report.json").read_text())["shortcut_check"]
    assert shortcut["images"] == 64 and 0 <= shortcut["mean_outside"] <= 1 and shortcut["region"] == "box"
    assert len(doc.findall(".//h:section[@id='shortcut-check']//h:img", NS)) == 4

    loaded = render_in_chromium(html, tmp_path / "report.png")
    assert len(loaded) == len(images) and all(ok and width > 0 for ok, width in loaded)
    shot = np.asarray(Image.open(tmp_path / "report.png").convert("L"), dtype=np.float32)
    assert shot.shape[0] > 2000 and shot.std() > 20  # a long page with pictures, not a blank one


@pytest.mark.browser
def test_five_class_report(fundus_run, tmp_path):
    evaluate(fundus_run, out_dir=tmp_path, bootstrap=50, quiet=True)
    html = tmp_path / "report.html"
    _, images = check_page(html)
    text = html.read_text()
    for needle in ("Most confident wrong predictions", "Proliferate DR", "qwk", "inscribed ellipse",
                   "most probable one", "Quadratic weighted kappa", "ROC AUC, one class vs the rest (mean)"):
        assert needle in text, needle
    judged = verdict(EvaluationResult.load(tmp_path / "metrics.json"))
    assert ("Do not use this model" in text) == (judged.level == "unusable")
    assert all(w in text for w in judged.warnings)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["shortcut_check"]["region"] == "ellipse"
    assert sum(map(len, report["confident_errors"].values())) == 12
    loaded = render_in_chromium(html, tmp_path / "report.png")
    assert all(ok and width > 0 for ok, width in loaded) and len(loaded) == len(images)


def test_report_command_and_its_errors(trained_run, binary_eval, tmp_path, capsys):
    copy = shutil.copytree(binary_eval[0], tmp_path / "eval")
    (copy / "report.html").unlink()
    assert main(["report", str(trained_run), "--eval-dir", str(copy), "--cam", "gradcam"]) == 0
    assert f"report written to {copy / 'report.html'}" in capsys.readouterr().out
    check_page(copy / "report.html", method="Grad-CAM")
    assert json.loads((copy / "report.json").read_text())["shortcut_check"]["method"] == "gradcam"
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no metrics.json in" in err[0] and "medcls evaluate" in err[0]
