"""Apply the shortcut-aware choice rule of ``benchmarks/accuracy.md`` (issue #16 item 4) to
candidate run folders, reading validation figures only: each run's ``training.json``
(``best_epoch_score``: the best epoch's validation AUC) and ``shortcut_score.json`` (written by
``medcls stress RUN --limit 100``). Writes ``results/shortcut_choice-<name>.json``; the test split
is scored afterwards, by ``medcls evaluate``, for every candidate.

    python benchmarks/shortcut_choice.py --name shipped a=runs/shipped-asset b=runs/shipped-stressed ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_json  # noqa: E402


def candidate(name: str, run: Path) -> dict:
    """The figures the rule reads for one run folder."""
    training = json.loads((run / "training.json").read_text())
    score = json.loads((run / "shortcut_score.json").read_text())
    return {"name": name, "run": str(run), "val_auc": training["best_epoch_score"],
            "threshold": training["threshold"], "threshold_reason": training["threshold_reason"],
            "stress_images": score["n_images"], "zoom_flip": score["zoom_flip"], "worst_auc": score["worst_auc"],
            "worst_auc_at": score["worst_auc_at"], "mean_auc": score["mean_auc"]}


def choose(rows: list[dict], min_val_auc: float, tie: float) -> dict:
    """The rule: eligible when ``val_auc >= min_val_auc``; the lowest ``zoom_flip``, and among those
    within ``tie`` of it the highest ``worst_auc``."""
    eligible = [r for r in rows if r["val_auc"] >= min_val_auc]
    if not eligible:
        raise SystemExit(f"no candidate reaches validation AUC {min_val_auc}")
    best_flip = min(r["zoom_flip"] for r in eligible)
    return max((r for r in eligible if r["zoom_flip"] <= best_flip + tie), key=lambda r: r["worst_auc"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("candidates", nargs="+", metavar="NAME=RUN")
    ap.add_argument("--name", required=True, help="name of this choice (the results file's suffix)")
    ap.add_argument("--min-val-auc", type=float, default=0.995)
    ap.add_argument("--tie", type=float, default=0.05, help="zoom_flip differences treated as ties")
    args = ap.parse_args()
    rows = [candidate(name, Path(run)) for name, run in (c.split("=", 1) for c in args.candidates)]
    chosen = choose(rows, args.min_val_auc, args.tie)
    print("| candidate | val_auc | threshold | zoom_flip | worst_auc (at) | mean stressed AUC |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['val_auc']:.4f} | {r['threshold']:.3f} | {r['zoom_flip']:.3f} | "
              f"{r['worst_auc']:.4f} ({r['worst_auc_at']}) | {r['mean_auc']:.4f} |")
    print(f"chosen: {chosen['name']} ({chosen['run']})")
    write_json(RESULTS, f"shortcut_choice-{args.name}",
               {"rule": {"min_val_auc": args.min_val_auc, "tie": args.tie}, "candidates": rows,
                "chosen": chosen["name"]})


if __name__ == "__main__":
    main()
