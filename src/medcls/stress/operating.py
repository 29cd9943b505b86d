"""The operating point set on stressed validation (``eval.threshold_on=stressed``).

Validation is drawn from the training hospital, so a threshold chosen on it alone sits where that
hospital's collimation and exposure put the scores; a new site moves them (the shipped pneumonia
model calls most tightly cropped normals PNEUMONIA). With this rule the temperature and threshold
are fitted on the validation images together with copies of them under :data:`SITE_SHIFTS`, the
changes of site stated in advance as plausible: tighter collimation (centred 90%, 80% and 70%
crops), another exposure curve (gamma 2**±0.3) and contrast (±20%). The test split plays no part.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from medcls.stress.perturbations import PERTURBATIONS

SITE_SHIFTS: tuple[tuple[str, float], ...] = (
    ("zoom_in", 0.1), ("zoom_in", 0.2), ("zoom_in", 0.3),
    ("gamma", -0.3), ("gamma", 0.3),
    ("contrast", -0.2), ("contrast", 0.2),
)


def describe() -> str:
    """The shifts in words, for the decision's reason."""
    return ", ".join(f"{name} {strength:g}" for name, strength in SITE_SHIFTS)


def stressed_logits(logits_of: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray,
                    clean_logits: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of uint8 ``images`` (whose own logits are ``clean_logits``) pooled with
    those of their copies under every :data:`SITE_SHIFTS` entry; ``logits_of`` scores a batch."""
    pooled = [clean_logits]
    for name, strength in SITE_SHIFTS:
        pooled.append(logits_of(PERTURBATIONS.get(name)(images, strength, seed)))
    return np.concatenate(pooled), np.tile(labels, len(pooled))
