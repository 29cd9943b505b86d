"""The typed record of a stress test: the validation split replayed under each perturbation
at each strength, and the shortcut score drawn from it (``stress.json``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional


@dataclass(frozen=True)
class StressPoint:
    """The metrics at one strength. ``flip``: per true class, the share of the images the
    model gets right unperturbed that it calls another class here (binary: NORMAL called
    PNEUMONIA under NORMAL, the reverse under PNEUMONIA; multi-class: per grade)."""

    strength: float
    auc: float  # ROC AUC (binary) or one-vs-rest AUC (multi-class); NaN where a class is missing
    accuracy: float  # at the stored threshold (binary) or argmax
    flip: dict[str, float]


@dataclass(frozen=True)
class StressCurve:
    """One perturbation's points, strength 0 (the unperturbed split) among them."""

    name: str
    unit: str
    points: list[StressPoint]

    def at(self, strength: float) -> Optional[StressPoint]:
        """The point at ``strength`` (None if not replayed)."""
        return next((p for p in self.points if abs(p.strength - strength) < 1e-9), None)


@dataclass(frozen=True)
class ShortcutScore:
    """The shortcut score (rule in :mod:`medcls.stress.score`): higher ``worst_auc`` and lower
    ``zoom_flip`` are better; judged on validation only."""

    worst_auc: float  # lowest AUC over every perturbation and strength
    worst_auc_at: str  # where it was reached, "perturbation strength"
    mean_auc: float  # mean AUC over every perturbed point
    zoom_flip: float  # share of the first class (NORMAL; grade 0) flipped by a centred 70% crop
    zoom_flip_class: str
    worst_flip: float  # largest flip rate of any class at any perturbed point
    worst_flip_at: str


@dataclass(frozen=True)
class StressResult:
    """The validation split's images (a seeded per-class subset when ``limit_per_class`` is set)
    replayed under every perturbation."""

    split: str
    n_images: int
    per_class: dict[str, int]
    limit_per_class: Optional[int]
    seed: int
    classes: list[str]
    threshold: Optional[float]
    tta: bool
    curves: list[StressCurve]
    score: ShortcutScore

    @property
    def baseline(self) -> StressPoint:
        """The unperturbed split's point (shared by every curve)."""
        return self.curves[0].at(0.0)

    def curve(self, name: str) -> StressCurve:
        return next(c for c in self.curves if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StressResult":
        curves = [StressCurve(c["name"], c["unit"], [StressPoint(**p) for p in c["points"]]) for c in data["curves"]]
        return cls(**{**data, "curves": curves, "score": ShortcutScore(**data["score"])})

    @classmethod
    def load(cls, path: str | Path) -> "StressResult":
        """Read a ``stress.json`` written by :func:`medcls.stress.run.stress_run`."""
        return cls.from_dict(json.loads(Path(path).read_text()))
