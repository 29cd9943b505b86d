"""Write the facts of the shipped model's run (test metrics with CIs, operating point,
calibration, OOD flag rate, training cost, size) to ``benchmarks/results/shipped_model.json``,
which MODEL_CARD.md quotes and ``tests/test_shipped_model.py`` checks the shipped file against.

    python benchmarks/shipped_card.py runs/shipped      # after `make ship-model` trained and evaluated it

After ``medcls refit-ood`` changed only the shipped file's detector (``make refit-shipped-ood``),
``--ood-from EVAL_DIR`` (a ``medcls evaluate`` of the shipped file) replaces the card's OOD section
and file size and keeps the rest, which the network's run measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the evaluated run folder whose model.pt is shipped")
    ap.add_argument("--command", default="make ship-model", help="the command that reproduces the run")
    ap.add_argument("--ood-from", type=Path, metavar="EVAL_DIR",
                    help="only refresh the OOD section and size: RUN is then the shipped file")
    args = ap.parse_args()
    if args.ood_from is not None:
        card = json.loads(OUT.read_text())
        card["ood"] = json.loads((args.ood_from / "metrics.json").read_text()).get("ood")
        card["size_bytes"] = args.run.stat().st_size
    else:
        card = shipped_card(args.run, args.command)
    OUT.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
