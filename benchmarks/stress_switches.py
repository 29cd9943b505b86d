"""Training switches against shortcuts, each judged by the shortcut score on stressed
validation (medcls.stress.score; the test split is never scored here): train one preset
with each switch, replay its validation split under every perturbation, and write
benchmarks/results/stress_switches.{json,md}. Rows are appended, so negative results stay.

    python benchmarks/stress_switches.py                       # every variant, the compact preset
    python benchmarks/stress_switches.py --variants baseline crop --set data.image_size=128
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from medcls.api import stress, train
from medcls.config import load_config
from medcls.evaluation.compare import format_value

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "stress_switches.json"
PRESET = HERE.parent / "configs" / "pneumonia-compact.yaml"
# A run small enough for the shared 2-core CPU: the score's ranking, not the shipped accuracy
# (no weight average: the preset's 0.998 would still be near the initial weights after ~80 steps).
SMALL = ["data.image_size=64", "data.limit_per_class=200", "train.epochs=6", "train.early_stopping_patience=0",
         "train.ema=0", "eval.tta=false", "eval.bootstrap=0", "output_dir=runs/stress-switches"]
CROP = ["augment.crop_scale=0.36"]  # crops down to 60% of each side: the tighter collimations that flip normals
VARIANTS = {
    "baseline": [],
    "crop": CROP,
    "crop+aspect": CROP + ["augment.crop_aspect=0.3"],
    "gamma": ["augment.gamma=0.5"],
    "border+erase": ["augment.border=0.5", "augment.erase=0.5"],
    "all": CROP + ["augment.crop_aspect=0.3", "augment.gamma=0.5", "augment.border=0.5", "augment.erase=0.5"],
}
COLUMNS = ["variant", "switches", "size", "epochs", "fit_min", "val_images", "val_auc", "val_accuracy",
           "stress_auc", "stress_auc_at", "mean_stress_auc", "zoom_flip", "worst_flip", "worst_flip_at"]


def measure(variant: str, overrides: list[str], stress_limit: int | None) -> dict:
    """Train ``variant`` and score its stressed validation split."""
    cfg = load_config(PRESET, SMALL + overrides + VARIANTS[variant] + [f"name=stress-{variant}"])
    start = time.perf_counter()
    run = train(cfg, quiet=True)
    fit = time.perf_counter() - start
    result = stress(run, limit=stress_limit, quiet=True)
    s, base = result.score, result.baseline
    return {"variant": variant, "switches": " ".join(VARIANTS[variant]) or "(none)", "run": str(run),
            "size": cfg.data.image_size, "epochs": cfg.train.epochs, "fit_min": round(fit / 60, 1),
            "val_images": result.n_images, "val_auc": base.auc, "val_accuracy": base.accuracy,
            "stress_auc": s.worst_auc, "stress_auc_at": s.worst_auc_at, "mean_stress_auc": s.mean_auc,
            "zoom_flip": s.zoom_flip, "worst_flip": s.worst_flip, "worst_flip_at": s.worst_flip_at,
            "overrides": SMALL + overrides}


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(format_value(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


NOTES = "## Notes"
PAGE = RESULTS.with_suffix(".md")


def write_page(rows: list[dict]) -> None:
    """The Markdown table of ``rows``; hand-written findings below it survive a rewrite."""
    notes = PAGE.read_text().partition(NOTES)[2] if PAGE.is_file() else ""
    PAGE.write_text(
        "# Switches against shortcuts, judged on stressed validation\n\n"
        "Produced by `benchmarks/stress_switches.py`. Every number is on the validation split (the test split "
        "is not scored): `val_auc` unperturbed, `stress_auc` the worst AUC over every perturbation and strength "
        "of `medcls stress`, `zoom_flip` the share of correctly called NORMAL images called PNEUMONIA after a "
        "centred 70% crop. Better: higher `stress_auc`, lower `zoom_flip`, `val_auc` kept. "
        "Runs are small (see `overrides` in the JSON) to fit the shared CPU; one seed each.\n\n" + markdown(rows)
        + ("\n" + NOTES + notes if notes else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                    help="variants to train (none: rewrite the page from the results file)")
    ap.add_argument("--set", action="append", default=[], help="override for every variant")
    ap.add_argument("--stress-limit", type=int, default=100, help="validation images per class (0: all)")
    args = ap.parse_args()
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    for variant in args.variants:
        rows.append(measure(variant, args.set, args.stress_limit))
        print(json.dumps({k: rows[-1][k] for k in COLUMNS}), flush=True)
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
        write_page(rows)  # after each variant: an interrupted benchmark keeps what it measured
    write_page(rows)


if __name__ == "__main__":
    main()
