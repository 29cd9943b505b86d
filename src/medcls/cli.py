"""The ``medcls`` command: a thin layer over the library's public functions.
Known failures (bad config, data layout, image, checkpoint) end with one clear
line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import sys

from medcls.assets import DEFAULT_MODEL, SHIPPED
from medcls.core.version import __version__

EXIT_USER_ERROR = 2
COMPILE_HELP = ("PyTorch checkpoints: compile with TorchInductor, bf16 weights where the CPU has bf16 "
                "(measured 1.2-3x ONNX Runtime's images/s on a bf16 CPU; compiling takes seconds)")

SHIPPED_NAMES = ", ".join(SHIPPED)
DATASET_HELP = "registered data set name (default: the one the folder's class folders fit)"


class _Parser(argparse.ArgumentParser):
    """Bad arguments end in one line naming the problem (argparse would print the usage first)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, lo: float, hi: float | None = None):
    """An argparse type: a ``kind`` number in [lo, hi] (hi None: no upper bound)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not (lo <= value and (hi is None or value <= hi)) or value != value:  # value != value: NaN
            bound = f"{lo:g} to {hi:g}" if hi is not None else f"at least {lo:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range (allowed: {bound})")
        return value
    return parse


PORT = _number(int, 1, 65535)
COUNT = _number(int, 1)


def _config(args):
    from medcls.config import load_config

    overrides = list(args.set or [])
    if getattr(args, "data", None):
        overrides.append(f"data.root={args.data}")
    if getattr(args, "dataset", None):
        overrides.append(f"data.dataset={args.dataset}")
    return load_config(args.config, overrides)


def _print_config(cfg) -> int:
    from medcls.config.keys import config_yaml

    print(config_yaml(cfg), end="")
    return 0


def _tune_process(reuse_memory: bool = True) -> None:
    """Process-wide settings are the entry point's to make (library code leaves them alone):
    keep freed memory for reuse, as PyTorch allocates each batch's activations anew."""
    from medcls.core.allocator import reuse_freed_memory

    reuse_freed_memory(reuse_memory)


def cmd_inspect(args) -> int:
    from medcls.api import inspect
    from medcls.console import show_inspection

    out = args.out or "runs/inspect"
    show_inspection(inspect(args.data, args.dataset, out, audit=args.audit))
    print(f"inspection written to {out}/ (inspection.json, samples.png)")
    return 0


def cmd_audit(args) -> int:
    from medcls.api import audit
    from medcls.console import show_audit

    out = args.out or "runs/audit"
    show_audit(audit(args.data, args.dataset, out, max_distance=args.max_distance).summary)
    print(f"audit written to {out}/ (audit.csv: one row per image in a duplicate group; audit.json: counts)")
    return 0


def cmd_train(args) -> int:
    from medcls.api import resume, train

    if args.resume:
        from medcls.config import ConfigError

        if args.config or args.set or args.dataset:
            raise ConfigError("--resume continues the run with its own config.yaml; leave out --config/--set/--dataset")
        _tune_process()
        run = resume(args.resume, data_root=args.data)
    else:
        cfg = _config(args)
        if args.print_config:
            return _print_config(cfg)
        _tune_process(cfg.train.reuse_memory)
        run = train(cfg, run_dir=args.run_dir, force=args.force)
    print(f"run folder: {run}  (model: {run / 'model.pt'})")
    return 0


def cmd_recalibrate(args) -> int:
    from medcls.api import recalibrate

    _tune_process()
    cal = recalibrate(args.run, data_root=args.data, threshold_rule=args.threshold_rule,
                      target_sensitivity=args.target_sensitivity, ordinal_decision=args.ordinal_decision,
                      threshold_on=args.threshold_on, tta=args.tta)
    print(f"recalibrated {args.run}/model.pt on {cal.n_val} validation images: {cal.threshold_reason}; "
          f"temperature {cal.temperature:.3f}")
    return 0


def cmd_refit_ood(args) -> int:
    from medcls.api import refit_ood

    _tune_process()
    ood = refit_ood(args.model, args.method, data_root=args.data, out=args.out)
    print(f"OOD detector refitted ({ood.method}): threshold {ood.threshold:.4f} flags {ood.flag_rate:.0%} of "
          f"validation; written to {args.out or args.model}")
    return 0


def cmd_calibrate(args) -> int:
    from medcls.api import calibrate
    from medcls.console import show_site_calibration

    _tune_process()
    result = calibrate(args.model, args.data, args.out, args.threshold_rule, args.target_sensitivity, args.bootstrap,
                       ordinal_decision=args.ordinal_decision)
    show_site_calibration(result)
    print(f"site-calibrated model written to {result.out}")
    return 0


def cmd_adapt(args) -> int:
    from medcls.api import adapt
    from medcls.console import show_site_adaptation

    _tune_process()
    result = adapt(args.model, args.data, args.out)
    show_site_adaptation(result)
    print(f"adapted model written to {result.out}")
    return 0


def cmd_evaluate(args) -> int:
    from medcls.api import evaluate
    from medcls.console import show_evaluation
    from medcls.evaluation.evaluate import resolve_checkpoint

    _tune_process()
    show_evaluation(evaluate(args.target, data_root=args.data, out_dir=args.out, bootstrap=args.bootstrap,
                             ood=args.ood or (), stress=args.stress, stress_limit=args.stress_limit))
    print(f"evaluation written to {args.out or resolve_checkpoint(args.target)[1]}/")
    return 0


def cmd_stress(args) -> int:
    from medcls.api import stress
    from medcls.console import show_stress
    from medcls.evaluation.evaluate import resolve_checkpoint

    _tune_process()
    show_stress(stress(args.run, data_root=args.data, out_dir=args.out, limit=args.limit, seed=args.seed))
    print(f"stress test written to {args.out or resolve_checkpoint(args.run)[1]}/stress/")
    return 0


def cmd_predict(args) -> int:
    from medcls.api import explain, predict
    from medcls.console import show_predictions
    from medcls.explain.gradcam import explainable_model

    _tune_process()
    if args.explain:
        explainable_model(args.model)  # an ONNX model fails here, before the predictions, not after
    predictions, errors = predict(args.paths, args.model, args.out, compile=args.compile)
    rows = [p.row() for p in predictions]
    if rows:
        show_predictions(rows)
    for name, reason in errors.items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if args.out and rows:
        print(f"{len(rows)} prediction(s) written to {args.out}")
    if args.explain and rows:
        written = explain([p.path for p in predictions], args.model, args.explain, args.cam, args.cam_layer)
        print(f"{len(written)} heat-map overlay(s) written to {args.explain}")
    return 0 if rows or not errors else EXIT_USER_ERROR


def cmd_compare(args) -> int:
    from medcls.api import compare
    from medcls.console import show_comparison
    from medcls.core.io import atomic_write_text
    from medcls.evaluation.compare import markdown_table

    rows = compare(args.runs)
    show_comparison(rows)
    if args.markdown:
        atomic_write_text(args.markdown, markdown_table(rows))
    return 0


def cmd_export(args) -> int:
    from medcls.api import export

    result = export(args.checkpoint, args.out)
    print(f"exported {result.path} (ONNX opset {result.opset}); max |ONNX - PyTorch| on a test batch: "
          f"logits {result.max_abs_diff_logits:.2e}, features {result.max_abs_diff_features:.2e}")
    return 0


def cmd_serve(args) -> int:
    from medcls.api import serve
    from medcls.serving.app import ServiceSettings

    _tune_process()
    serve(args.model, args.host, args.port, ServiceSettings(
        max_upload_bytes=int(args.max_upload_mb * 1_000_000), max_files=args.max_files, max_batch=args.max_batch,
        max_pixels=int(args.max_megapixels * 1_000_000)),
        compile=args.compile, api_key=args.api_key, allowed_hosts=args.allowed_host)
    return 0


def cmd_report(args) -> int:
    from medcls.api import report

    summary = report(args.run, args.eval_dir, method=args.cam)
    print(f"report written to {summary['html']}")
    return 0


def cmd_run(args) -> int:
    from medcls.api import run as run_job
    from medcls.console import show_evaluation

    cfg = _config(args)
    if args.print_config:
        return _print_config(cfg)
    _tune_process(cfg.train.reuse_memory)
    run, result = run_job(cfg, run_dir=args.run_dir, force=args.force)
    show_evaluation(result)
    m = result.metrics
    print("test metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()))
    print(f"run folder: {run}")
    if cfg.data.image_size < 224:
        print("for the full faithful recipe (224 px grayscale seed CNN): "
              "medcls run -c pneumonia-seed-cnn")
    return 0


def add_cam_options(p, layer: bool = True) -> None:
    from medcls.explain import DEFAULT_METHOD, METHOD_NAMES

    p.add_argument("--cam", choices=METHOD_NAMES, default=DEFAULT_METHOD, help="heat-map method")
    if layer:
        p.add_argument("--cam-layer", help="module to explain, e.g. backbone.layer4 (default: the last feature map)")


def add_threshold_options(p, default: str) -> None:
    p.add_argument("--threshold-rule", choices=["youden", "sensitivity", "f1", "fixed"],
                   help=f"operating-point rule (default: {default})")
    p.add_argument("--target-sensitivity", type=_number(float, 0, 1), help="for --threshold-rule sensitivity")
    p.add_argument("--ordinal-decision", choices=["argmax", "cutpoints"],
                   help="graded models: argmax, or cut-points on the expected grade fitted for QWK")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="medcls", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"medcls {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="also show Lightning's messages (hardware, model summary) and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p):
        p.add_argument("--config", "-c", help="YAML file or shipped preset name (e.g. pneumonia-compact; "
                                              "list: medcls train --print-config)")
        p.add_argument("--data", help="data folder (overrides data.root; default $MEDCLS_DATA)")
        p.add_argument("--dataset", help="registered data set name (overrides data.dataset)")
        p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.epochs=3 (repeatable)")

    def with_run_folder(p):  # train and run
        p.add_argument("--print-config", action="store_true",
                       help="print every config key (its value here, default and allowed values) as YAML and exit")
        p.add_argument("--run-dir", help="run folder, which must be empty (default: OUTPUT_DIR/NAME-TIMESTAMP); "
                                         "give every rank the same one under torchrun or SLURM")
        p.add_argument("--force", action="store_true", help="train into a --run-dir that holds an earlier run's files")

    p = sub.add_parser("inspect", help="sizes, modes, counts, imbalance and a sample grid of a data set")
    p.add_argument("data", help="data folder")
    p.add_argument("--dataset", help=DATASET_HELP)
    p.add_argument("--out", help="output folder (default runs/inspect)")
    p.add_argument("--audit", action=argparse.BooleanOptionalAction,
                   help="summarise the duplicate audit (default: the data set's default)")
    p.set_defaults(fn=cmd_inspect)

    p = sub.add_parser("audit", help="exact and near duplicates and label conflicts of a data set")
    p.add_argument("data", help="data folder")
    p.add_argument("--dataset", help=DATASET_HELP)
    p.add_argument("--out", help="output folder for audit.csv and audit.json (default runs/audit)")
    p.add_argument("--max-distance", type=_number(int, 0, 256),
                   help="near duplicates: largest phash Hamming distance, of 256 bits (default: the calibrated one)")
    p.set_defaults(fn=cmd_audit)

    p = sub.add_parser("train", help="train a model; prints the run folder")
    with_config(p)
    with_run_folder(p)
    p.add_argument("--resume", metavar="RUN", help="continue the interrupted run RUN from its last checkpoint")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("recalibrate", help="refit a run's temperature, threshold and OOD flag on its validation "
                                           "split, without retraining")
    p.add_argument("run", help="run folder")
    p.add_argument("--data", help="data folder, if it moved since training")
    add_threshold_options(p, "the run's eval.threshold_rule")
    p.add_argument("--threshold-on", choices=["validation", "stressed"],
                   help="fit the operating point on validation alone or with its copies under plausible "
                        "site shifts (default: the run's eval.threshold_on)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="switch test-time augmentation on (or off) for the model, its decisions fitted "
                        "on the augmented validation logits (default: the run's eval.tta)")
    p.set_defaults(fn=cmd_recalibrate)

    p = sub.add_parser("refit-ood", help="refit only a model's out-of-distribution detector on the training and "
                                         "validation images it was trained on (weights and threshold untouched)")
    p.add_argument("model", help="checkpoint (model.pt) or run folder")
    p.add_argument("--method", help="the OOD score, e.g. knn-grid (default: the model's eval.ood_method)")
    p.add_argument("--data", help="data folder, if it moved since training")
    p.add_argument("--out", "-o", help="new model file (default: rewrite MODEL)")
    p.set_defaults(fn=cmd_refit_ood)

    def site_command(name: str, what: str, data: str, suffix: str):
        p = sub.add_parser(name, help=f"{what}; writes a new model file")
        p.add_argument("model", help="checkpoint (model.pt) or run folder")
        p.add_argument("--data", required=True, help=data)
        p.add_argument("--out", "-o", help=f"new model file (default: MODEL_NAME-{suffix}.pt here)")
        return p

    p = site_command("calibrate", "refit a model's threshold and temperature on a labelled sample of a new site",
                     "the site's labelled images, one folder per class", "site")
    add_threshold_options(p, "the model's")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws for the intervals")
    p.set_defaults(fn=cmd_calibrate)

    p = site_command("adapt", "re-estimate a model's BatchNorm statistics on a site's unlabelled images (AdaBN)",
                     "folder of the site's images (searched recursively; no labels)", "adapted")
    p.set_defaults(fn=cmd_adapt)

    p = sub.add_parser("evaluate", help="evaluate a run or checkpoint on its test split")
    p.add_argument("target", help="run folder or model.pt")
    p.add_argument("--data", help="data folder, if it moved since training")
    p.add_argument("--out", help="output folder (default: the run folder)")
    p.add_argument("--bootstrap", type=_number(int, 0), help="bootstrap draws for the confidence intervals")
    p.add_argument("--ood", nargs="+", metavar="FOLDER",
                   help="folders of foreign images: fraction flagged out-of-distribution and OOD AUROC vs test")
    p.add_argument("--stress", action=argparse.BooleanOptionalAction,
                   help="replay the validation split under perturbations (default: the run's eval.stress)")
    p.add_argument("--stress-limit", type=int, metavar="N",
                   help="validation images per class for the stress test (0: all; default: eval.stress_limit)")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("stress", help="replay a run's validation split under the perturbations a new site "
                                      "brings (zoom, exposure, blur, markers, ...): what the model leans on")
    p.add_argument("run", help="run folder or model.pt")
    p.add_argument("--data", help="data folder, if it moved since training")
    p.add_argument("--out", help="output folder (default: the run folder)")
    p.add_argument("--limit", type=int, metavar="N",
                   help="validation images per class (0: all; default: the run's eval.stress_limit)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of random perturbations")
    p.set_defaults(fn=cmd_stress)

    p = sub.add_parser("predict", help="predict image files or folders (searched recursively)")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--model", "-m", help=f"checkpoint (model.pt), run folder or a shipped model ({SHIPPED_NAMES}; "
                                         f"default: {DEFAULT_MODEL})")
    p.add_argument("--out", "-o", help="write predictions to FILE.csv or FILE.json")
    p.add_argument("--explain", metavar="OUT_DIR", help="also write a heat-map overlay PNG per image into OUT_DIR")
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    add_cam_options(p)
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("compare", help="runs side by side (metrics, size, cost)")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--markdown", help="also write the table as Markdown to this file")
    p.set_defaults(fn=cmd_compare)

    p = sub.add_parser("export", help="export a checkpoint to ONNX, verified against PyTorch")
    p.add_argument("checkpoint", help="checkpoint (model.pt) or run folder")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format")
    p.add_argument("--out", "-o", help="output file (default: beside the checkpoint, .onnx)")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("serve", help="web service and page for a model (checkpoint or .onnx)")
    p.add_argument("--model", "-m", help=f"checkpoint (model.pt), run folder, exported .onnx or a shipped model "
                                         f"({SHIPPED_NAMES}; default: {DEFAULT_MODEL})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=PORT, default=8000)
    p.add_argument("--max-upload-mb", type=_number(float, 0.001), default=20, help="largest accepted request body")
    p.add_argument("--max-files", type=COUNT, default=16, help="most images in one request")
    p.add_argument("--max-megapixels", type=_number(float, 0.001), default=100,
                   help="most pixels (width x height, all files) in one request, in millions")
    p.add_argument("--max-batch", type=COUNT, help="most concurrent images run together "
                   "(1: no batching; default: 8 for PyTorch, 1 for ONNX Runtime and --compile, where batches do not help)")
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.add_argument("--api-key", help="require this key for the /v1/ endpoints (default: $MEDCLS_API_KEY, "
                                     "which other users cannot read from the process list; none: open to "
                                     "anyone who can reach the port)")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="a host name clients use to reach the service (repeatable; default: loopback names "
                        "and --host; any name when --host is 0.0.0.0)")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("report", help="one self-contained HTML report of an evaluated run")
    p.add_argument("run", help="run folder")
    p.add_argument("--eval-dir", help="folder of the evaluation's outputs, if not the run folder")
    add_cam_options(p, layer=False)
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("run", help="the main job: inspect, train, evaluate, save")
    with_config(p)
    with_run_folder(p)
    p.set_defaults(fn=cmd_run)
    for command in sub.choices.values():  # also accepted after the command's name
        command.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                             help="also show Lightning's messages and debug logs")
    return parser


# Lightning's INFO messages: hardware availability, a logger advertisement, the model summary (with
# "Total FLOPs: 0" on CPU); its warnings still show.
LIGHTNING_NOISE = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                   "lightning.pytorch.callbacks.model_summary", "lightning.pytorch.accelerators.cuda")


def _show_logs(verbose: bool = False) -> None:
    """The library logs through :mod:`logging`; the command line shows its messages with rich
    (debug ones with ``verbose``) and Lightning's chatter only with ``verbose``."""
    import logging

    from rich.logging import RichHandler

    from medcls.console import console

    logger = logging.getLogger("medcls")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(RichHandler(console=console, show_time=False, show_path=False, markup=False))
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in LIGHTNING_NOISE:  # set before Lightning is imported: it only sets its top logger's level
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _show_logs(args.verbose)
    from medcls.console import ProgressBars, console
    from medcls.core.io import DISK_FULL, NotWritableError, not_writable
    from medcls.core.progress import reporting
    from medcls.errors import USER_ERRORS

    try:
        # Long work shows bars on a terminal; the web service's requests are short, its log the server's.
        with reporting(ProgressBars() if args.command != "serve" and console.is_terminal else None):
            return args.fn(args)
    except USER_ERRORS as exc:
        print(f"medcls {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        # Met outside medcls.core.io's writers (a folder made, Lightning's log): a full disk or a
        # read-only folder is the user's to fix, anything else is a bug worth its traceback.
        if not_writable(exc) and exc.filename:
            print(f"medcls {args.command}: error: {NotWritableError(exc.filename, exc.errno)}", file=sys.stderr)
            return EXIT_USER_ERROR
        if exc.errno not in DISK_FULL:
            raise
        print(f"medcls {args.command}: error: no space left on device while writing {exc.filename or 'the run'}; "
              f"free some space and run again", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
