"""Terminal rendering of the library's results (rich tables and lines) for the CLI:
the library returns records and logs; only entry points write to the terminal."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from medcls.core.progress import ProgressEvent
from medcls.data.audit import HASH_SIZE, AuditSummary
from medcls.evaluation.compare import column_label, format_value
from medcls.evaluation.result import EvaluationResult
from medcls.evaluation.verdict import verdict
from medcls.metrics.classification import metric_name
from medcls.stress.result import StressResult

if TYPE_CHECKING:
    from medcls.site.adapt import SiteAdaptationResult
    from medcls.site.calibrate import SiteCalibrationResult

console = Console(stderr=True)


class ProgressBars:
    """Renders :class:`~medcls.core.progress.ProgressEvent` s as transient rich bars on stderr, one line
    per running task (a spinner where the amount of work is unknown); install it with
    ``medcls.core.progress.reporting(ProgressBars())``."""

    def __init__(self, out: Console = console):
        self.out, self._live, self._tasks = out, None, {}

    def __call__(self, event: ProgressEvent) -> None:
        if event.finished:
            if event.key in self._tasks:
                self._live.remove_task(self._tasks.pop(event.key))
            if not self._tasks and self._live is not None:
                self._live.stop()  # before anything else draws (Lightning's bar): one live display at a time
                self._live = None
            return
        if self._live is None:
            self._live = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
                                  TextColumn("{task.fields[count]}"), TimeElapsedColumn(), console=self.out,
                                  transient=True)
            self._live.start()
        count = f"{event.done}/{event.total}" if event.total is not None else ""  # not "0/?" for a spinner
        if event.key not in self._tasks:
            self._tasks[event.key] = self._live.add_task(event.description, total=event.total, count=count)
        self._live.update(self._tasks[event.key], completed=event.done, count=count)


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


def middle_ellipsis(text: str, width: int) -> str:
    """``text`` cut in the middle to ``width`` characters: both ends of a path are what tells files apart."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return f"{text[:head]}…{text[len(text) - (width - 1 - head):]}"


def short_paths(paths: Sequence[str], width: int = 36) -> tuple[str, list[str]]:
    """(the folder the paths share, each path relative to it, middle-cut to ``width``)."""
    folders = [os.path.dirname(p) for p in paths]
    common = os.path.commonpath(folders) if folders and all(os.path.isabs(f) == os.path.isabs(folders[0])
                                                            for f in folders) else ""
    return common, [middle_ellipsis(os.path.relpath(p, common) if common else p, width) for p in paths]


def _longest_word(texts: Sequence[str]) -> int:
    return max(len(word) for t in texts for word in t.split())


def show_predictions(rows: Sequence[dict], out: Console | None = None) -> None:
    """The prediction table at the terminal's width: paths relative to the folder they share, one
    column per class named by it (a name wraps, never cut), an out-of-distribution image's row in red
    and marked untrusted; the OOD score column only where there is room (the --out file has it)."""
    out = out or Console()
    classes = [k[2:] for k in rows[0] if k.startswith("p_")]
    foreign = sum(row.get("in_distribution") is False for row in rows)
    has_ood = any(r.get("ood_score") is not None for r in rows)
    prediction_width = _longest_word(classes + ["prediction"] + ["(untrusted)"] * bool(foreign))
    widths = [prediction_width, *(max(5, _longest_word([c])) for c in classes)] + [5, 5][:2 * has_ood]
    gap = 2  # a blank divider and one space of padding between columns (collapsed padding, no edges)
    folder, names = short_paths([r["path"] for r in rows], width=1 << 16)
    wanted = max(16, min(40, max(len(n) for n in names)))  # the image column's width if there is room
    with_score = has_ood and out.width - sum(widths) - gap * len(widths) >= wanted
    if has_ood and not with_score:
        widths.pop(-2)
    image_width = max(12, out.width - sum(widths) - gap * len(widths))
    names = [middle_ellipsis(n, 2 * image_width - 1) for n in names]  # at most two lines
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                  title=f"images in {folder}/" if folder else None, title_justify="left")
    # fixed widths: rich would otherwise widen the headers and squeeze the last columns out
    table.add_column("image", overflow="fold", width=image_width)
    table.add_column("prediction", width=prediction_width)
    for c, width in zip(classes, widths[1:]):
        table.add_column(c, justify="right", width=width)  # a multi-word name wraps onto two header lines
    if with_score:
        table.add_column("OOD score", justify="right", width=5)
    if has_ood:
        table.add_column("in dist.", justify="right", width=5)
    for name, row in zip(names, rows):
        untrusted = row.get("in_distribution") is False
        cells = [name, row["prediction"] + (" (untrusted)" if untrusted else ""),
                 *(f"{row[f'p_{c}']:.3f}" for c in classes)]
        if with_score:
            cells.append("-" if row.get("ood_score") is None else f"{row['ood_score']:.3f}")
        if has_ood:
            flag = row.get("in_distribution")
            cells.append("-" if flag is None else "yes" if flag else "NO")
        table.add_row(*(Text(c) for c in cells), style="bold red" if untrusted else None)
    out.print(table)
    if foreign:
        out.print(Text(f"WARNING: {foreign} image(s) do not look like this model's training data "
                       "(in dist. NO): their predictions are untrusted.", style="bold red"))


def show_comparison(rows: Sequence[dict], out: Console | None = None) -> None:
    """Runs side by side (the columns some run has); when they do not fit the terminal's width,
    one column per run instead, so that no run name or number is cut."""
    out = out or Console()
    cols = [c for c in rows[0] if any(r.get(c) is not None for r in rows)]
    wide = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for col in cols:
        wide.add_column(column_label(col), justify="left" if col in ("run", "arch", "device") else "right", no_wrap=True)
    for row in rows:
        wide.add_row(*(format_value(row[c], c) for c in cols))
    if Measurement.get(out, out.options.update(max_width=1 << 16), wide).maximum <= out.width:
        out.print(wide)
        return
    tall = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    tall.add_column("")
    for row in rows:
        tall.add_column(str(row["run"]), justify="right", overflow="fold")
    for col in cols[1:]:
        tall.add_row(column_label(col), *(format_value(row[col], col) for row in rows))
    out.print(tall)


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
