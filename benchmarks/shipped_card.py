"""Write the facts of a shipped model's run (test metrics with CIs, operating point,
calibration, OOD flag rate, training cost, size) to a JSON file that its model card quotes and
its test checks the shipped file against (``benchmarks/results/shipped_model.json`` for the chest
X-ray model, ``shipped_retinopathy.json`` for the retinopathy one).

    python benchmarks/shipped_card.py runs/shipped      # after `make ship-model` trained and evaluated it
    python benchmarks/shipped_card.py runs/shipped-retinopathy --ship retinopathy \\
        --out benchmarks/results/shipped_retinopathy.json --test-csv benchmarks/results/retinopathy-test.csv

``--ship NAME`` also writes the run's model into the package as the shipped model NAME, with
float16 weights (half the file; loaded into float32), and scores the test split again with that
file: the card records how many decisions the rounding changed. ``--test-csv`` writes the run's
frozen test split (``path`` relative to the data root, ``label``).

After ``medcls refit-ood`` changed only the shipped file's detector (``make refit-shipped-ood``),
``--ood-from EVAL_DIR`` (a ``medcls evaluate`` of the shipped file) replaces the card's OOD section
and file size and keeps the rest, which the network's run measured.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "shipped_model.json"
TRAINING_KEYS = ("fit_seconds", "epochs_run", "device", "mean_images_per_s", "parameters", "peak_rss_mb",
                 "best_epoch_score", "monitor")


def shipped_card(run: Path, command: str) -> dict:
    """The card's facts, read from the run folder's metrics.json, training.json and data.json."""
    metrics = json.loads((run / "metrics.json").read_text())
    training = json.loads((run / "training.json").read_text())
    data = json.loads((run / "data.json").read_text())
    card = {"source_run": run.name, "command": command}
    card.update({k: metrics[k] for k in ("metrics", "ci95", "bootstrap_draws", "threshold", "threshold_rule",
                                          "calibration", "confusion_matrix", "n_test")})
    card["threshold_reason"] = training["threshold_reason"]
    card["ood"] = metrics.get("ood")
    card["training"] = {k: training.get(k) for k in TRAINING_KEYS}
    card["counts"] = data["counts"]
    card["size_bytes"] = (run / "model.pt").stat().st_size
    return card


def ship(run: Path, name: str) -> dict:
    """Write ``run``'s model as the shipped model ``name`` (float16 weights) and score the run's test
    images with the written file: its size, and its decisions against the run's evaluation."""
    from medcls.assets import HERE as ASSETS
    from medcls.assets import SHIPPED
    from medcls.inference.predictor import Predictor
    from medcls.models.checkpoint import load_checkpoint, save_checkpoint

    asset = ASSETS / SHIPPED[name]
    net, info = load_checkpoint(run / "model.pt")
    save_checkpoint(asset, net, info, half=True)
    with (run / "predictions.csv").open(newline="") as fh:
        evaluated = list(csv.DictReader(fh))
    predictor = Predictor.load(asset)
    rows, errors = predictor.predict([r["path"] for r in evaluated])
    if errors:
        raise SystemExit(f"the shipped file could not score {len(errors)} test image(s): {errors}")
    by_path = {r.path: r.prediction for r in rows}
    changed = sum(by_path[r["path"]] != r["prediction"] for r in evaluated)
    accuracy = float(np.mean([by_path[r["path"]] == r["label"] for r in evaluated]))
    return {"asset": SHIPPED[name], "asset_bytes": asset.stat().st_size, "weights": "float16",
            "test_decisions_changed_by_float16": int(changed), "test_accuracy_of_asset": accuracy}


def validation_by_epoch(run: Path) -> list[dict]:
    """The validation figures Lightning logged at the end of each epoch (the run's metrics.csv)."""
    with (run / "metrics.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("val_loss")]
    keys = [k for k in rows[0] if k.startswith("val_")] if rows else []
    return [{"epoch": int(r["epoch"]) + 1, **{k: round(float(r[k]), 4) for k in keys if r[k]}} for r in rows]


def write_test_split(run: Path, out: Path) -> int:
    """The run's frozen test split (from its manifest) as ``path,label`` CSV; returns its size."""
    from medcls.config import config_from_dict
    from medcls.core.io import atomic_write_text
    from medcls.data.datasets import load_index
    from medcls.data.split import read_manifest, split_table
    from medcls.models.checkpoint import load_checkpoint

    _, info = load_checkpoint(run / "model.pt")
    data = config_from_dict(info.config).data
    index = load_index(data.dataset, data.root)
    splits = read_manifest(run / "manifest.csv", index)
    atomic_write_text(out, split_table(index, splits, "test"))
    return len(splits["test"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the evaluated run folder whose model.pt is shipped")
    ap.add_argument("--command", default="make ship-model", help="the command that reproduces the run")
    ap.add_argument("--out", type=Path, default=OUT, help=f"the card's JSON file (default: {OUT.name})")
    ap.add_argument("--ship", metavar="NAME", help="write the model into the package as the shipped model NAME "
                                                   "(float16 weights)")
    ap.add_argument("--test-csv", type=Path, help="also write the frozen test split to this CSV")
    ap.add_argument("--ood-from", type=Path, metavar="EVAL_DIR",
                    help="only refresh the OOD section and size: RUN is then the shipped file")
    args = ap.parse_args()
    if args.ood_from is not None:
        card = json.loads(args.out.read_text())
        card["ood"] = json.loads((args.ood_from / "metrics.json").read_text()).get("ood")
        card["size_bytes"] = args.run.stat().st_size
    else:
        card = shipped_card(args.run, args.command)
    if args.ship:
        card["validation_by_epoch"] = validation_by_epoch(args.run)
        card["shipped"] = ship(args.run, args.ship)
    if args.test_csv:
        card["test_csv"] = {"file": args.test_csv.name, "rows": write_test_split(args.run, args.test_csv)}
    args.out.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
