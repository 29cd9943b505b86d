"""Terminal rendering of the library's results (rich tables and lines) for the CLI:
the library returns records and logs; only entry points write to the terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from medcls.data.audit import HASH_SIZE, AuditSummary
from medcls.evaluation.result import EvaluationResult
from medcls.evaluation.verdict import verdict
from medcls.metrics.classification import metric_name

if TYPE_CHECKING:
    from medcls.site.adapt import SiteAdaptationResult
    from medcls.site.calibrate import SiteCalibrationResult

console = Console(stderr=True)


def show_inspection(info: dict) -> None:
    """The counts per split and class, sizes, modes and the audit line of :func:`medcls.api.inspect`."""
    table = Table(title=f"{info['dataset']}: {info['images']} images, {info['groups']} patients/groups")
    table.add_column("split")
    for c in info["classes"]:
        table.add_column(c, justify="right")
    table.add_column("imbalance", justify="right")
    for split, counts in info["counts"].items():
        table.add_row(split, *(str(counts[c]) for c in info["classes"]), f"{info['imbalance_ratio'][split]:.2f}")
    console.print(table)
    w, h = info["width"], info["height"]
    if w:
        console.print(f"sizes: width {w['min']}-{w['max']} (median {w['median']:.0f}), height {h['min']}-{h['max']} "
                      f"(median {h['median']:.0f}), {info['distinct_sizes']} distinct; modes: {info['modes']}")
    if "audit" in info:
        console.print(f"{AuditSummary(**info['audit']).line()}; details: medcls audit")
    if info["unreadable_headers"]:
        console.print(f"[yellow]{len(info['unreadable_headers'])} file(s) not readable as images: "
                      f"{', '.join(info['unreadable_headers'][:5])}")


def show_audit(summary: AuditSummary) -> None:
    """The duplicate audit's counts and label conflicts."""
    console.print(f"{summary.dataset}: {summary.images} images, {summary.duplicate_groups} duplicate groups "
                  f"holding {summary.images_in_duplicate_groups} images (phash distance <= "
                  f"{summary.max_distance} of {HASH_SIZE ** 2} bits)")
    console.print(summary.line())
    for classes, n in summary.conflicts_by_classes.items():
        console.print(f"  conflicts {classes}: {n}")
    if summary.unreadable:
        console.print(f"[yellow]{summary.unreadable} unreadable file(s) not audited")


def show_evaluation(result: EvaluationResult) -> None:
    """The test metrics with their CIs, then the OOD flag's table when there is one."""
    table = Table(title=f"Test metrics ({result.n_test} images)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    for key, value in result.metrics.items():
        lo_hi = result.ci95.get(key)
        table.add_row(metric_name(key), f"{value:.4f}", f"[{lo_hi[0]:.4f}, {lo_hi[1]:.4f}]" if lo_hi else "")
    console.print(table)
    if result.ood is not None:
        show_ood(result.ood)
    judged = verdict(result)
    console.print(judged.headline)
    for warning in judged.warnings:
        console.print(f"[bold red]WARNING: {warning}" if judged.level == "unusable" else f"[yellow]caution: {warning}")


def show_ood(ood: dict) -> None:
    """Share flagged on the test split (by class) and on each foreign folder, with the AUROC."""
    table = Table(title=f"Out-of-distribution flag ({ood['method']}, threshold {ood['threshold']:.3f})")
    table.add_column("images")
    table.add_column("n", justify="right")
    table.add_column("flagged", justify="right")
    table.add_column("AUROC vs test", justify="right")
    table.add_row("test split", str(ood["test"]["n"]), f"{ood['test']['flagged']:.1%}", "")
    for name, c in ood["test"].get("by_class", {}).items():
        table.add_row(f"  test, {name}", str(c["n"]), f"{c['flagged']:.1%}", "")
    for name, s in ood["foreign"].items():
        table.add_row(name, str(s["n"]), f"{s['flagged']:.1%}", f"{s['auroc']:.4f}")
    accuracy = ood["test"].get("accuracy")
    if accuracy and None not in accuracy.values():
        table.caption = (f"test accuracy: {accuracy['in_distribution']:.1%} of unflagged images, "
                         f"{accuracy['flagged']:.1%} of flagged ones")
    console.print(table)


def show_site_calibration(result: SiteCalibrationResult) -> None:
    """Before/after metrics of ``medcls calibrate`` on the site's sample, with the intervals."""
    rec = result.record
    table = Table(title=f"Site calibration on {result.n_images} labelled images "
                        f"({', '.join(f'{c} {n}' for c, n in rec.counts.items())})")
    for column in ("metric", "model as shipped", "refitted (in sample)", "95% CI", "refit, images left out",
                   "95% CI "):
        table.add_column(column, justify="left" if column == "metric" else "right")

    def interval(ci: dict, key: str) -> str:
        return f"[{ci[key][0]:.3f}, {ci[key][1]:.3f}]" if key in ci else ""

    for key, after in result.after.items():
        oob = result.out_of_bag.get(key)
        table.add_row(metric_name(key), f"{result.before[key]:.3f}", f"{after:.3f}", interval(result.ci95_after, key),
                      "" if oob is None else f"{oob:.3f}", interval(result.ci95_out_of_bag, key))
    table.caption = (f"{result.bootstrap_draws} bootstrap draws; the in-sample column is fitted on the images it "
                     f"scores (optimistic), the left-out column refits on each resample and scores the rest")
    console.print(table)
    span = (f" (95% CI over resamples {result.threshold_ci95[0]:.3f}-{result.threshold_ci95[1]:.3f})"
            if result.threshold_ci95 else "")
    console.print(f"threshold {rec.threshold_before:.3f} -> {rec.threshold:.3f}{span}: {rec.threshold_reason}; "
                  f"temperature {rec.temperature_before:.3f} -> {rec.temperature:.3f}")


def show_site_adaptation(result: SiteAdaptationResult) -> None:
    """What AdaBN changed on the site's images that can be seen without labels."""
    views = [("model as it was", result.before), ("adapted, old OOD threshold", result.after_old_threshold),
             ("adapted, OOD re-set on the site", result.after)]
    table = Table(title=f"AdaBN on {result.record.n_images} unlabelled images "
                        f"({result.record.batchnorm_layers} BatchNorm layers)")
    table.add_column("")
    classes = list(result.before.predicted)
    for c in classes:
        table.add_column(f"predicted {c}", justify="right")
    table.add_column("OOD flagged", justify="right")
    for name, view in views:
        table.add_row(name, *(f"{view.predicted[c]:.1%}" for c in classes),
                      "-" if view.ood_flagged is None else f"{view.ood_flagged:.1%}")
    table.caption = "no labels are used: whether accuracy changed needs a labelled sample (medcls calibrate)"
    console.print(table)
