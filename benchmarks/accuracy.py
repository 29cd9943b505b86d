"""Train and evaluate each given preset on the real data (or collect existing runs),
then write the side-by-side table to benchmarks/accuracy.md and the raw rows to
benchmarks/results/accuracy.json. Rows are appended, so negative results stay.

    python benchmarks/accuracy.py configs/pneumonia-seed-cnn.yaml configs/pneumonia-compact.yaml
    python benchmarks/accuracy.py --runs runs/pneumonia-*        # existing run folders
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medcls.api import run
from medcls.config import load_config
from medcls.evaluation.compare import compare_runs, markdown_table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "accuracy.json"
NOTES = "## Notes"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*", help="presets to train and evaluate")
    ap.add_argument("--runs", nargs="*", default=[], help="existing run folders to add")
    ap.add_argument("--set", action="append", default=[], help="override for every preset")
    args = ap.parse_args()
    runs = [Path(r) for r in args.runs]
    for config in args.configs:
        run_dir, _ = run(load_config(config, args.set))
        runs.append(run_dir)
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    known = {r["run"] for r in rows}
    rows += [r for r in compare_runs(runs) if r["run"] not in known]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    table = markdown_table(rows)
    page = HERE / "accuracy.md"
    # Hand-written findings below the table survive a rewrite.
    notes = page.read_text().partition(NOTES)[2] if page.is_file() else ""
    page.write_text(
        "# Chest X-ray accuracy: every architecture and recipe tried\n\n"
        "Kermany test split (624 images); operating point, temperature and best epoch on the patient-grouped "
        "validation split; `val_auc` is the only column model choice looked at. Produced by "
        "`benchmarks/accuracy.py`; `device` says where each run trained.\n\n" + table + "\n" + NOTES + notes)
    print(table)


if __name__ == "__main__":
    main()
