"""The public Python API: one function per ``medcls`` command, with the same name and
arguments, so a notebook does what the command line does. The command line
(:mod:`medcls.cli`) only parses arguments, calls these and prints their results.

Each function imports its layer when called: ``import medcls`` stays light."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

if TYPE_CHECKING:
    from medcls.config import Config
    from medcls.data.audit import Audit
    from medcls.evaluation.result import EvaluationResult
    from medcls.inference.export import ExportResult
    from medcls.inference.predictor import Prediction
    from medcls.models.checkpoint import OODState
    from medcls.serving.app import ServiceSettings
    from medcls.site.adapt import SiteAdaptationResult
    from medcls.site.calibrate import SiteCalibrationResult
    from medcls.stress.result import StressResult
    from medcls.training.calibrate import Calibration


def inspect(data: str | Path, dataset: str | None = None, out: str | Path | None = "runs/inspect",
            audit: Optional[bool] = None, quiet: bool = False) -> dict:
    """Sizes, colour modes, counts, imbalance and a sample grid of a data set, written to ``out``
    (``dataset`` None: the registered one its layout fits)."""
    from medcls.data.inspect import inspect_data

    return inspect_data(data, dataset, out, quiet=quiet, audit=audit)


def audit(data: str | Path, dataset: str | None = None, out: str | Path | None = "runs/audit",
          max_distance: Optional[int] = None, quiet: bool = False) -> Audit:
    """Exact and near duplicates and label conflicts of a data set (``audit.csv``, ``audit.json`` in ``out``;
    ``dataset`` None: the registered one its layout fits)."""
    from medcls.data.audit import audit_dataset

    return audit_dataset(data, dataset, out, max_distance=max_distance, quiet=quiet)


def train(cfg: Config, run_dir: str | Path | None = None, quiet: bool = False, force: bool = False) -> Path:
    """Train a model as ``cfg`` says (then calibrate it on validation); returns the run folder
    (``run_dir``, which must be empty unless ``force``, or a new one)."""
    from medcls.training.train import train as fit

    return fit(cfg, run_dir, quiet=quiet, force=force)


def resume(run: str | Path, data_root: str | Path | None = None, quiet: bool = False) -> Path:
    """Continue the interrupted training run ``run`` from its last checkpoint; returns the run folder."""
    from medcls.training.resume import resume as continue_run

    return continue_run(run, data_root, quiet=quiet)


def recalibrate(run: str | Path, data_root: str | Path | None = None, threshold_rule: Optional[str] = None,
                target_sensitivity: Optional[float] = None, quiet: bool = False,
                ordinal_decision: Optional[str] = None, threshold_on: Optional[str] = None,
                tta: Optional[bool] = None) -> Calibration:
    """Refit a finished run's temperature, threshold (or ordinal cut-points) and OOD detector on its
    validation split (``threshold_on="stressed"``: with its stressed copies too), without retraining
    (optionally with another rule, or with test-time augmentation switched on or off); rewrites its
    ``model.pt``."""
    from medcls.training.calibrate import calibrate_run

    return calibrate_run(run, data_root, threshold_rule, target_sensitivity, quiet=quiet,
                         ordinal_decision=ordinal_decision, threshold_on=threshold_on, tta=tta)


def refit_ood(model: str | Path, method: Optional[str] = None, data_root: str | Path | None = None,
              out: str | Path | None = None, quiet: bool = False) -> OODState:
    """Refit only a model's out-of-distribution detector (e.g. ``method="knn-grid"``) on the training
    and validation images it was trained on; rewrites the model file, or writes ``out``. The network,
    its threshold and temperature are not touched."""
    from medcls.training.calibrate import refit_ood as refit

    return refit(model, method, data_root, out, quiet=quiet)


def calibrate(model: str | Path, data: str | Path, out: str | Path | None = None,
              threshold_rule: Optional[str] = None, target_sensitivity: Optional[float] = None,
              bootstrap: int = 1000, quiet: bool = False, ordinal_decision: Optional[str] = None
              ) -> SiteCalibrationResult:
    """Refit a model's threshold (or ordinal cut-points) and temperature on a labelled sample of a new
    site (class folders); writes a new model file with the fit's provenance (the weights are not touched)."""
    from medcls.site.calibrate import calibrate_site

    return calibrate_site(model, data, out, threshold_rule, target_sensitivity, bootstrap, quiet=quiet,
                          ordinal_decision=ordinal_decision)


def adapt(model: str | Path, data: str | Path, out: str | Path | None = None,
          quiet: bool = False) -> SiteAdaptationResult:
    """Re-estimate a model's BatchNorm statistics on a site's unlabelled images (AdaBN); writes a new
    model file, its OOD flag re-scaled on those images, with a before/after report."""
    from medcls.site.adapt import adapt_site

    return adapt_site(model, data, out, quiet=quiet)


def evaluate(target: str | Path, data_root: str | Path | None = None, out_dir: str | Path | None = None,
             bootstrap: Optional[int] = None, quiet: bool = False, ood: Sequence[str | Path] = (),
             report: bool = True, stress: Optional[bool] = None, stress_limit: Optional[int] = None
             ) -> EvaluationResult:
    """Evaluate a run (or checkpoint) once on its test split: ``metrics.json``, ``predictions.csv``,
    plots, the stress test of its validation split (``stress``, ``stress_limit`` images per class;
    None: the run's config) and, with ``report``, ``report.html`` (whose shortcut check joins
    ``metrics.json``)."""
    import dataclasses

    from medcls.core.io import atomic_write_json
    from medcls.core.progress import task
    from medcls.evaluation.evaluate import evaluate_model, resolve_checkpoint
    from medcls.reporting.report import write_report

    result = evaluate_model(target, data_root, out_dir, bootstrap, quiet, ood, stress, stress_limit)
    if report:
        run = resolve_checkpoint(target)[1]
        out = Path(out_dir) if out_dir else run
        with task("writing report.html (heat maps, shortcut check)", enabled=not quiet):
            shortcut = write_report(run, out, result.to_dict())["shortcut_check"]
        result = dataclasses.replace(result, shortcut_check=shortcut)
        atomic_write_json(out / "metrics.json", result.to_dict())
    return result


def stress(target: str | Path, data_root: str | Path | None = None, out_dir: str | Path | None = None,
           limit: Optional[int] = None, seed: int = 0, quiet: bool = False) -> StressResult:
    """Replay a run's validation split under the perturbations a new site brings (``limit`` images
    per class; None: the run's ``eval.stress_limit``, 0: all): ``stress/`` and ``shortcut_score.json``."""
    from medcls.stress.run import stress_run

    return stress_run(target, data_root, out_dir, limit, seed, quiet)


def predict(paths: Iterable[str | Path], model: str | Path | None = None, out: str | Path | None = None,
            compile: bool = False) -> tuple[list[Prediction], dict[str, str]]:
    """Predict image files and folders (default model: the shipped one); returns (predictions, {file: error})."""
    from medcls.inference.predictor import predict_files

    return predict_files(paths, model, out, compile=compile)


def explain(paths: Sequence[str | Path], model: str | Path | None, out_dir: str | Path, method: str = "gradcam++",
            layer: Optional[str] = None) -> list[Path]:
    """A heat-map overlay PNG per image in ``out_dir`` (``model`` None: the shipped one; a ``.pt``
    checkpoint or run folder, not ONNX); returns the files written."""
    from medcls.explain.gradcam import explain_files

    return explain_files(paths, model, out_dir, method, layer)


def report(run: str | Path, eval_dir: str | Path | None = None, method: str = "gradcam++") -> dict:
    """One self-contained ``report.html`` of an evaluated run; returns ``report.json``'s content."""
    from medcls.reporting.report import write_report

    return write_report(run, eval_dir, method=method)


def compare(runs: Sequence[str | Path]) -> list[dict]:
    """Runs side by side: metrics, size and cost, one row per run."""
    from medcls.evaluation.compare import compare_runs

    return compare_runs(list(runs))


def export(checkpoint: str | Path, out: str | Path | None = None) -> ExportResult:
    """Export a checkpoint to one ONNX file, verified against PyTorch."""
    from medcls.inference.export import export_onnx

    return export_onnx(checkpoint, out)


def serve(model: str | Path | None = None, host: str = "127.0.0.1", port: int = 8000,
          settings: Optional[ServiceSettings] = None, compile: bool = False, api_key: Optional[str] = None,
          allowed_hosts: Optional[Sequence[str]] = None) -> None:
    """Run the web service and page for ``model`` until interrupted; ``api_key`` (default
    $MEDCLS_API_KEY) guards its ``/v1/`` endpoints, ``allowed_hosts`` the names it answers to."""
    from medcls.serving.server import serve as run_server

    run_server(model, host, port, settings, compile=compile, api_key=api_key,
               allowed_hosts=list(allowed_hosts) if allowed_hosts else None)


def run(cfg: Config, quiet: bool = False, run_dir: str | Path | None = None,
        force: bool = False) -> tuple[Path, EvaluationResult]:
    """The main job: inspect -> train -> evaluate once on test (with report), in one run folder
    (``run_dir``, which must be empty unless ``force``, or a new one); returns (run folder, evaluation result)."""
    from medcls.config.checks import check_run_config
    from medcls.data.prepared import require_data_root
    from medcls.training.run_dir import claim_run_dir, new_run_dir
    from medcls.training.train import train as fit

    check_run_config(cfg)  # before the run folder and the inspection exist
    require_data_root(cfg.data)
    folder = claim_run_dir(run_dir, force) if run_dir else new_run_dir(cfg)
    inspect(cfg.data.root, cfg.data.dataset, folder / "inspection", quiet=quiet)
    fit(cfg, folder, quiet=quiet, force=None)  # claimed above: it holds this job's inspection
    return folder, evaluate(folder, quiet=quiet)
