"""Seed ensembles of one preset: the mean of the runs' calibrated p(positive), its threshold
chosen on validation by each run's own rule (as a single run's is), against every run alone,
on the test split with 95% bootstrap CIs. Membership is fixed in advance (every run given),
so nothing is chosen on test. Binary models only. Writes ``benchmarks/results/ensemble.{json,md}``.

    PYTHONPATH=src python benchmarks/ensemble.py runs/shipped runs/compact-seed1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from medcls.evaluation.evaluate import checkpoint_data, resolve_checkpoint
from medcls.inference.predictor import Predictor
from medcls.metrics.classification import binary_metrics, bootstrap_ci
from medcls.metrics.threshold import choose_threshold
from medcls.models.checkpoint import load_checkpoint
from medcls.models.inference import logits_to_probs

HERE = Path(__file__).resolve().parent
SHOWN = ("accuracy", "recall", "specificity", "f1", "roc_auc")


def member(run: Path) -> dict:
    """One run's calibrated p(positive) on validation and test, with the data it was split on."""
    ckpt = resolve_checkpoint(run)[0]
    net, info = load_checkpoint(ckpt)
    if not info.binary:
        raise SystemExit(f"{run}: ensembles here are for binary models")
    data = checkpoint_data(ckpt, info, quiet=True)
    predictor = Predictor(net, info)
    p = {split: logits_to_probs(predictor.logits(data.images(split)), info.temperature)[:, 1]
         for split in ("val", "test")}
    return {"run": str(run), "info": info, "data": data, "p": p}


def scored(y: np.ndarray, p: np.ndarray, threshold: float, draws: int) -> dict:
    return {"threshold": threshold, "metrics": binary_metrics(y, p, threshold),
            "ci95": bootstrap_ci(lambda i: binary_metrics(y[i], p[i], threshold), len(y), draws)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders of one preset (different seeds)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()
    members = [member(run) for run in args.runs]
    first = members[0]["data"]
    for m in members[1:]:  # one split for all, or the comparison means nothing
        if any(m["data"].paths(s) != first.paths(s) for s in ("val", "test")):
            raise SystemExit(f"{m['run']} was split differently from {members[0]['run']}")
    y_val, y_test = first.labels["val"], first.labels["test"]
    rule = members[0]["info"].threshold_rule or "youden"
    rows = {m["run"]: scored(y_test, m["p"]["test"], m["info"].threshold, args.bootstrap) for m in members}
    p_val = np.mean([m["p"]["val"] for m in members], axis=0)
    p_test = np.mean([m["p"]["test"] for m in members], axis=0)
    threshold, _ = choose_threshold(y_val, p_val, rule)
    rows[f"ensemble of {len(members)}"] = scored(y_test, p_test, threshold, args.bootstrap)
    lines = [f"# Seed ensemble: {', '.join(m['run'] for m in members)}", "",
             f"Mean calibrated p(positive) of the runs; threshold by the runs' rule ({rule}) on validation "
             f"({len(y_val)} images). Test split: {len(y_test)} images, 95% bootstrap CIs ({args.bootstrap} draws).",
             "", "| model | threshold | " + " | ".join(SHOWN) + " |", "|---|---:|" + "---:|" * len(SHOWN)]
    for name, r in rows.items():
        cells = [f"{r['metrics'][k]:.3f} [{r['ci95'][k][0]:.3f}, {r['ci95'][k][1]:.3f}]" for k in SHOWN]
        lines.append(f"| {name} | {r['threshold']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Reproduce: `PYTHONPATH=src python benchmarks/ensemble.py " + " ".join(sys.argv[1:]) + "`"]
    result = {"runs": [m["run"] for m in members], "threshold_rule": rule, "n_val": int(len(y_val)),
              "n_test": int(len(y_test)), "rows": rows}
    (HERE / "results" / "ensemble.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (HERE / "results" / "ensemble.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
