"""The ``medcls`` command: a thin layer over the library's public functions.
Known failures (bad config, data layout, image, checkpoint) end with one clear
line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medcls import __version__

EXIT_USER_ERROR = 2


def _config(args):
    from medcls.config import load_config

    overrides = list(args.set or [])
    if getattr(args, "data", None):
        overrides.append(f"data.root={args.data}")
    if getattr(args, "dataset", None):
        overrides.append(f"data.dataset={args.dataset}")
    return load_config(args.config, overrides)


def cmd_inspect(args) -> int:
    from medcls.data.inspect import inspect_data

    out = args.out or "runs/inspect"
    inspect_data(args.data, args.dataset, out)
    print(f"inspection written to {out}/ (inspection.json, samples.png)")
    return 0


def cmd_train(args) -> int:
    from medcls.training.train import train

    run = train(_config(args))
    print(f"run folder: {run}  (model: {run / 'model.pt'})")
    return 0


def cmd_evaluate(args) -> int:
    from medcls.evaluation.evaluate import evaluate, resolve_checkpoint

    evaluate(args.target, data_root=args.data, out_dir=args.out, bootstrap=args.bootstrap, ood=args.ood or ())
    print(f"evaluation written to {args.out or resolve_checkpoint(args.target)[1]}/")
    return 0


def _prediction_cells(row: dict) -> list:
    """A table row; an out-of-distribution image keeps its probabilities, marked untrusted in red."""
    from rich.text import Text

    foreign = row.get("in_distribution") is False
    cells = []
    for key, value in row.items():
        if key == "in_distribution":
            text = "-" if value is None else "yes" if value else "NO"
        else:
            text = f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)
        if foreign and (key == "prediction" or key.startswith("p_")):
            text += " (untrusted)"
        cells.append(Text(text, style="bold red" if foreign and key != "path" else ""))
    return cells


def cmd_predict(args) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from medcls.predict import predict_files

    rows, errors = predict_files(args.paths, args.model, args.out)
    console = Console()
    if rows:
        table = Table()
        for col in rows[0]:
            table.add_column(col, justify="left" if col in ("path", "prediction") else "right")
        for row in rows:
            table.add_row(*_prediction_cells(row))
        console.print(table)
        foreign = sum(row.get("in_distribution") is False for row in rows)
        if foreign:
            console.print(Text(f"WARNING: {foreign} image(s) do not look like this model's training data "
                               "(in_distribution NO): their predictions are untrusted.", style="bold red"))
    for name, reason in errors.items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if args.out:
        print(f"{len(rows)} prediction(s) written to {args.out}")
    return 0 if rows or not errors else EXIT_USER_ERROR


def cmd_run(args) -> int:
    from medcls.pipeline import run_pipeline

    cfg = _config(args)
    run, result = run_pipeline(cfg)
    m = result["metrics"]
    print("test metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()))
    print(f"run folder: {run}")
    if cfg.data.image_size < 224:
        print("for the full faithful recipe (224 px grayscale seed CNN): "
              "medcls run --config configs/pneumonia-seed-cnn.yaml")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medcls", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"medcls {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p):
        p.add_argument("--config", "-c", help="YAML preset (see configs/)")
        p.add_argument("--data", help="data folder (overrides data.root; default $MEDCLS_DATA)")
        p.add_argument("--dataset", help="registered data set name (overrides data.dataset)")
        p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.epochs=3 (repeatable)")

    p = sub.add_parser("inspect", help="sizes, modes, counts, imbalance and a sample grid of a data set")
    p.add_argument("data", help="data folder")
    p.add_argument("--dataset", default="pneumonia", help="registered data set name")
    p.add_argument("--out", help="output folder (default runs/inspect)")
    p.set_defaults(fn=cmd_inspect)

    p = sub.add_parser("train", help="train a model; prints the run folder")
    with_config(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a run or checkpoint on its test split")
    p.add_argument("target", help="run folder or model.pt")
    p.add_argument("--data", help="data folder, if it moved since training")
    p.add_argument("--out", help="output folder (default: the run folder)")
    p.add_argument("--bootstrap", type=int, help="bootstrap draws for the confidence intervals")
    p.add_argument("--ood", nargs="+", metavar="FOLDER",
                   help="folders of foreign images: fraction flagged out-of-distribution and OOD AUROC vs test")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("predict", help="predict image files or folders (searched recursively)")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--model", "-m", required=True, help="checkpoint (model.pt) or run folder")
    p.add_argument("--out", "-o", help="write predictions to FILE.csv or FILE.json")
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("run", help="the main job: inspect, train, evaluate, save")
    with_config(p)
    p.set_defaults(fn=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from medcls.errors import USER_ERRORS

    try:
        return args.fn(args)
    except USER_ERRORS as exc:
        print(f"medcls {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
