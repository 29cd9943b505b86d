"""Matplotlib figures without pyplot: no global figure registry and no backend switch,
so the library leaves the caller's matplotlib set-up (e.g. a notebook's) alone."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medcls.core.io import atomic_path


def subplots(nrows: int = 1, ncols: int = 1, **kwargs):
    """``(figure, axes)`` like ``pyplot.subplots``, on its own Agg canvas."""
    figsize = kwargs.pop("figsize", None)
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_png(fig: Figure, path: Path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG atomically (a reader never sees half a file)."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path
