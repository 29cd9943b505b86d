"""One self-contained HTML report of an evaluated run (images embedded as data
URIs, no network needed): data and split, training curves, test metrics with
confidence intervals, confusion matrix, ROC and PR curves, reliability, per-class
table, operating point, the stress test of the validation split (metrics under each
perturbation), the most confident errors with Grad-CAM overlays, the shortcut check and
the run's config. Also written: ``report.json`` (the shortcut
check and the errors shown) and the full-size overlays under ``gradcam/``."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from PIL import Image

from medcls.core.io import atomic_write_json, atomic_write_text
from medcls.data.images import ImageLoadError, load_image
from medcls.evaluation.result import EvaluationResult
from medcls.evaluation.verdict import verdict
from medcls.explain import DEFAULT_METHOD, METHOD_LABELS
from medcls.explain.gradcam import Explainer, overlay, overlay_names, save_png
from medcls.explain.shortcut import (
    default_region,
    outside_fraction,
    region_mask,
    summarize,
)
from medcls.inference.predictor import Predictor
from medcls.metrics.classification import metric_name

THUMBNAIL = 320  # longest side of embedded overlays, px


class ReportError(ValueError):
    """A report cannot be written (e.g. the run was never evaluated)."""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def file_uri(path: Path) -> str | None:
    return data_uri(path.read_bytes()) if path.is_file() else None


def thumbnail(image: np.ndarray, size: int = THUMBNAIL) -> np.ndarray:
    img = Image.fromarray(image)
    img.thumbnail((size, size), Image.LANCZOS)
    return np.asarray(img)


def image_uri(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return data_uri(buf.getvalue())


def outlined_overlay(path: str, cam: np.ndarray, region: str) -> np.ndarray:
    """A thumbnail of the original image with its heat map and the region's outline in white."""
    picture = overlay(thumbnail(load_image(path, "rgb")), cam)
    mask = region_mask(picture.shape[0], picture.shape[1], region)
    edge = (mask ^ np.pad(mask, 1)[2:, 1:-1]) | (mask ^ np.pad(mask, 1)[1:-1, 2:])
    picture[edge] = 255
    return picture


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def manifest_stats(path: Path) -> list[dict]:
    """Per split of the manifest: images, groups (patients), and images per class."""
    if not path.is_file():
        return []
    images: Counter = Counter()
    groups: dict[str, set] = defaultdict(set)
    per_class: dict[str, Counter] = defaultdict(Counter)
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            images[row["split"]] += 1
            groups[row["split"]].add(row["group"])
            per_class[row["split"]][row["class"]] += 1
    return [{"split": s, "images": images[s], "groups": len(groups[s]), "classes": dict(per_class[s])}
            for s in ("train", "val", "test") if s in images]


def read_predictions(path: Path, classes: list[str]) -> list[dict]:
    """predictions.csv rows with the true and predicted class indices and probabilities."""
    if not path.is_file():
        raise ReportError(f"no predictions.csv in {path.parent}: run `medcls evaluate` first")
    rows = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            probs = [float(row[f"p_{c}"]) for c in classes]
            rows.append({"path": row["path"], "label": classes.index(row["label"]),
                         "pred": classes.index(row["prediction"]), "probs": probs})
    return rows


def confident_errors(rows: list[dict], classes: list[str], k: int) -> dict[str, list[dict]]:
    """The ``k`` most confident errors per kind: false positives and false negatives
    (two classes, by p(positive)), or wrong predictions by their predicted class's probability."""
    wrong = [r for r in rows if r["pred"] != r["label"]]
    if len(classes) == 2:
        fp = sorted((r for r in wrong if r["pred"] == 1), key=lambda r: -r["probs"][1])
        fn = sorted((r for r in wrong if r["pred"] == 0), key=lambda r: r["probs"][1])
        return {f"False positives (true {classes[0]}, predicted {classes[1]})": fp[:k],
                f"False negatives (true {classes[1]}, predicted {classes[0]})": fn[:k]}
    return {"Most confident wrong predictions": sorted(wrong, key=lambda r: -r["probs"][r["pred"]])[:2 * k]}


def explain_errors(explainer: Explainer, groups: dict[str, list[dict]], classes: list[str],
                   out_dir: Path) -> dict[str, list[dict]]:
    """Grad-CAM of each error for its (wrong) predicted class: a card per image, and
    the full-size overlay PNG in ``out_dir``."""
    every = [r for rows in groups.values() for r in rows]
    names = dict(zip((r["path"] for r in every), overlay_names([r["path"] for r in every], explainer.method)))
    readable, missing = [], {}
    for r in every:
        try:
            load_image(r["path"], "rgb")
            readable.append(r)
        except ImageLoadError as exc:
            missing[r["path"]] = exc.reason
    explained = explainer.explain([r["path"] for r in readable], classes=[r["pred"] for r in readable])
    pictures = {r["path"]: ex.overlay() for r, ex in zip(readable, explained)}
    cards: dict[str, list[dict]] = {}
    for title, rows in groups.items():
        cards[title] = []
        for r in rows:
            card = {"name": Path(r["path"]).name, "path": r["path"], "true": classes[r["label"]],
                    "predicted": classes[r["pred"]], "confidence": r["probs"][r["pred"]], "image": None,
                    "missing": missing.get(r["path"])}
            picture = pictures.get(r["path"])
            if picture is not None:
                save_png(picture, out_dir / names[r["path"]])
                card.update(image=image_uri(thumbnail(picture)), overlay=names[r["path"]],
                            size=f"{picture.shape[1]}x{picture.shape[0]}")
            cards[title].append(card)
    return cards


def shortcut_check(explainer: Explainer, rows: list[dict], classes: list[str], region: str,
                   sample: int, seed: int = 0, show: int = 4) -> tuple[dict, list[dict]]:
    """Share of Grad-CAM energy outside ``region`` over a seeded sample of test images;
    returns the summary and cards for the ``show`` images with the most energy outside."""
    rng = np.random.default_rng(seed)
    picked = [rows[i] for i in sorted(rng.permutation(len(rows))[:sample])]
    images, kept = [], []
    for r in picked:
        try:
            images.append(explainer.predictor.preprocess(r["path"]))
            kept.append(r)
        except ImageLoadError:
            continue
    size = explainer.predictor.info.image_size
    mask = region_mask(size, size, region)
    cams = explainer.maps(np.stack(images), [r["pred"] for r in kept]) if kept else np.zeros((0, size, size))
    fractions = outside_fraction(cams, mask)
    summary = summarize(fractions, np.array([r["label"] for r in kept], dtype=int), classes, mask, region)
    summary.update(method=explainer.method, layer=explainer.layer)
    order = [i for i in np.argsort(-np.nan_to_num(fractions, nan=-1.0)) if not np.isnan(fractions[i])][:show]
    cards = [{"name": Path(kept[i]["path"]).name, "true": classes[kept[i]["label"]],
              "predicted": classes[kept[i]["pred"]], "outside": float(fractions[i]),
              "image": image_uri(outlined_overlay(kept[i]["path"], cams[i], region))} for i in order]
    return summary, cards


def _num(value, digits: int = 3) -> str:
    """Numbers for the page: fixed digits, 'n/a' for missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{float(value):.{digits}f}"


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("medcls.reporting", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["metric_name"] = metric_name
    env.filters["pct"] = lambda v: "n/a" if v is None or math.isnan(v) else f"{100 * v:.1f}%"
    return env


def write_report(run: str | Path, eval_dir: str | Path | None = None, metrics: dict | None = None,
                 method: str = DEFAULT_METHOD, top_k: int = 6, sample: int = 64, region: str | None = None) -> dict:
    """Write ``report.html`` and ``report.json`` for the evaluated run ``run``.

    ``eval_dir`` holds the evaluation's outputs (default: the run folder);
    ``metrics`` is the evaluation result (default: read from ``metrics.json``).
    Returns the content of ``report.json`` (with the shortcut check)."""
    run = Path(run)
    out = Path(eval_dir) if eval_dir else run
    if metrics is None:
        if not (out / "metrics.json").is_file():
            raise ReportError(f"no metrics.json in {out}: run `medcls evaluate {run}` first")
        metrics = _json(out / "metrics.json")
    recorded = Path(metrics.get("checkpoint", run / "model.pt"))
    checkpoint = recorded if recorded.is_file() else run / "model.pt"  # the run may have moved since
    predictor = Predictor.from_checkpoint(checkpoint)
    info = predictor.info
    classes = info.classes
    explainer = Explainer(predictor, method=method)
    rows = read_predictions(out / "predictions.csv", classes)
    errors = explain_errors(explainer, confident_errors(rows, classes, top_k), classes, out / "gradcam")
    region = region or default_region(info.config.get("data", {}).get("dataset", ""))
    shortcut, shortcut_cards = shortcut_check(explainer, rows, classes, region, sample)

    training = _json(run / "training.json")
    config_file = run / "config.yaml"
    page = _environment().get_template("report.html.j2").render(
        title=f"medcls report: {run.name}", generated=datetime.now().strftime("%Y-%m-%d %H:%M"), run=run.name,
        info=info, metrics=metrics, verdict=verdict(EvaluationResult.from_dict(metrics)), training=training,
        data=_json(run / "data.json"),
        inspection=_json(run / "inspection" / "inspection.json"), splits=manifest_stats(run / "manifest.csv"),
        plots={name: file_uri(out / f"{name}.png")
               for name in ("training_curves", "confusion_matrix", "roc", "pr", "reliability")},
        stress=metrics.get("stress"),
        stress_plots={c["name"]: file_uri(out / "stress" / f"{c['name']}.png")
                      for c in (metrics.get("stress") or {}).get("curves", [])},
        errors=errors, shortcut=shortcut, shortcut_cards=shortcut_cards, method_label=METHOD_LABELS[method],
        config_text=config_file.read_text() if config_file.is_file() else json.dumps(info.config, indent=2),
    )
    atomic_write_text(out / "report.html", page)
    summary = {"html": str(out / "report.html"), "shortcut_check": shortcut,
               "confident_errors": {title: [{k: v for k, v in c.items() if k != "image"} for c in cards]
                                    for title, cards in errors.items()}}
    atomic_write_json(out / "report.json", summary)
    return summary
