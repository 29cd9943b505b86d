"""A PNG per perturbation: validation AUC and accuracy (left) and the per-class flip
rates (right) against the perturbation's strength."""

from __future__ import annotations

from pathlib import Path

from medcls.core.figures import save_png, subplots
from medcls.stress.result import StressCurve


def plot_curve(curve: StressCurve, path: Path) -> Path:
    """The metrics of ``curve`` against strength, written to ``path``."""
    x = [p.strength for p in curve.points]
    fig, (left, right) = subplots(1, 2, figsize=(8.4, 3.2))
    left.plot(x, [p.auc for p in curve.points], "o-", label="AUC")
    left.plot(x, [p.accuracy for p in curve.points], "s--", label="accuracy")
    left.set_ylim(0, 1.02)
    left.set_ylabel("validation")
    left.legend(loc="lower left")
    for name in curve.points[0].flip:
        right.plot(x, [p.flip.get(name, float("nan")) for p in curve.points], "o-", label=f"true {name} flipped")
    right.set_ylim(0, 1.02)
    right.set_ylabel("share flipped")
    right.legend(loc="upper left", fontsize="small")
    for ax in (left, right):
        ax.set_xlabel(curve.unit, fontsize="small")
        ax.axvline(0, color="grey", lw=0.6)
        ax.grid(alpha=0.3)
    fig.suptitle(f"stress: {curve.name}")
    return save_png(fig, path)
