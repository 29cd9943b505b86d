"""The shortcut score, stated before any run is judged by it, from stressed validation only:

- ``worst_auc``: the lowest validation AUC over every perturbation at every strength
  (what the model's ranking falls to under the worst plausible change of site);
- ``zoom_flip``: the share of validation images of the first class (NORMAL; grade 0) that
  the model gets right and calls another class once centre-cropped to 70% of each side
  and resized back (the tighter collimation that flips the shipped model's normals).

A switch against shortcuts helps when it lowers ``zoom_flip`` and raises ``worst_auc``
without lowering the unperturbed validation AUC; the test split plays no part."""

from __future__ import annotations

import numpy as np

from medcls.stress.result import ShortcutScore, StressCurve

ZOOM = ("zoom_in", 0.3)  # perturbation and strength of zoom_flip: a centred 70% crop


def shortcut_score(curves: list[StressCurve], classes: list[str]) -> ShortcutScore:
    """The score of the replayed ``curves`` (see the module's rule)."""
    perturbed = [(c.name, p) for c in curves for p in c.points if p.strength != 0]
    aucs = [(p.auc, f"{name} {p.strength:g}") for name, p in perturbed if not np.isnan(p.auc)]
    worst_auc, worst_auc_at = min(aucs) if aucs else (float("nan"), "")
    flips = [(max(p.flip.values()), f"{name} {p.strength:g}") for name, p in perturbed if p.flip]
    worst_flip, worst_flip_at = max(flips) if flips else (float("nan"), "")
    zoom = next((c.at(ZOOM[1]) for c in curves if c.name == ZOOM[0]), None)
    return ShortcutScore(
        worst_auc=float(worst_auc), worst_auc_at=worst_auc_at,
        mean_auc=float(np.mean([a for a, _ in aucs])) if aucs else float("nan"),
        zoom_flip=zoom.flip.get(classes[0], float("nan")) if zoom else float("nan"), zoom_flip_class=classes[0],
        worst_flip=float(worst_flip), worst_flip_at=worst_flip_at)
