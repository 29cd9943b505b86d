"""Terminal rendering of the library's results (rich tables and lines) for the CLI:
the library returns records and logs; only entry points write to the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from medcls.data.audit import HASH_SIZE, AuditSummary
from medcls.evaluation.result import EvaluationResult
from medcls.evaluation.verdict import verdict
from medcls.metrics.classification import metric_name
from medcls.stress.result import StressResult

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
    if result.stress is not None:
        show_stress(result.stress)
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


def show_stress(result: StressResult) -> None:
    """Per perturbation the worst validation AUC and each class's largest flip rate, then the shortcut score."""
    base = result.baseline
    table = Table(title=f"Stress test: {result.n_images} {result.split} images under perturbations "
                        f"(unperturbed AUC {base.auc:.4f}, accuracy {base.accuracy:.4f})")
    table.add_column("perturbation")
    table.add_column("worst AUC", justify="right")
    table.add_column("worst accuracy", justify="right")
    for name in result.classes:
        table.add_column(f"{name} flipped (most)", justify="right")
    for curve in result.curves:
        worst = min(curve.points, key=lambda p: p.auc if p.auc == p.auc else 2.0)
        cells = [f"{worst.auc:.4f} @ {worst.strength:g}", f"{min(p.accuracy for p in curve.points):.4f}"]
        for name in result.classes:
            most = max(curve.points, key=lambda p: p.flip.get(name, 0.0))
            cells.append(f"{most.flip.get(name, float('nan')):.1%} @ {most.strength:g}")
        table.add_row(curve.name, *cells)
    console.print(table)
    s = result.score
    console.print(f"shortcut score (validation): worst AUC {s.worst_auc:.4f} ({s.worst_auc_at}); "
                  f"{s.zoom_flip_class} flipped by a 70% crop {s.zoom_flip:.1%}")
