"""The typed record of one evaluation on a frozen test split, as written to ``metrics.json``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from medcls.stress.result import StressResult


@dataclass(frozen=True)
class CalibrationSummary:
    """How well the probabilities are calibrated, with and without the fitted temperature."""

    temperature: float
    ece: float
    ece_uncalibrated: float
    nll: float
    nll_uncalibrated: float


@dataclass(frozen=True)
class EvaluationResult:
    """Test-split metrics with bootstrap CIs, calibration and the optional OOD, shortcut and
    stress sections (the stress section is measured on validation, never on test)."""

    n_test: int
    classes: list[str]
    metrics: dict[str, float]
    ci95: dict[str, list[float]]
    bootstrap_draws: int
    threshold: Optional[float]
    threshold_rule: Optional[str]
    confusion_matrix: list[list[int]]
    per_class: list[dict[str, Any]]
    calibration: CalibrationSummary
    unreadable: dict[str, str] = field(default_factory=dict)
    checkpoint: str = ""
    ood: Optional[dict[str, Any]] = None
    shortcut_check: Optional[dict[str, Any]] = None
    stress: Optional[StressResult] = None  # the validation split under perturbations (medcls.stress)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (sections that were not computed are left out)."""
        out = dataclasses.asdict(self)
        return {k: v for k, v in out.items() if not (k in ("ood", "shortcut_check", "stress") and v is None)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvaluationResult":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["calibration"] = CalibrationSummary(**data["calibration"])
        if data.get("stress") is not None:
            values["stress"] = StressResult.from_dict(data["stress"])
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> "EvaluationResult":
        """Read a ``metrics.json`` written by :func:`medcls.evaluation.evaluate.evaluate_model`."""
        return cls.from_dict(json.loads(Path(path).read_text()))
