"""Operating-point selection for binary models, on held-out labelled data (validation, or a site's sample)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve


def choose_threshold(y_true: np.ndarray, p_pos: np.ndarray, rule: str, target_sensitivity: float = 0.95,
                     fixed: float = 0.5, on: str = "validation") -> tuple[float, str]:
    """Return ``(threshold, explanation)``; predict positive when ``p >= threshold``. ``on`` names
    the data in the explanation (validation; a site's sample for ``medcls calibrate``).

    - ``youden``: maximise sensitivity + specificity - 1;
    - ``sensitivity``: the highest threshold whose sensitivity reaches the target
      (most specificity for the sensitivity asked for);
    - ``f1``: maximise F1;
    - ``fixed``: the given value.
    """
    if rule == "fixed":
        return float(fixed), f"fixed threshold {fixed}"
    if len(np.unique(y_true)) < 2:
        return 0.5, f"{on} has one class only: default threshold 0.5"
    # Every distinct score is a candidate: sklearn's default drops collinear points,
    # which can hide the highest threshold that reaches a target sensitivity.
    fpr, tpr, thr = roc_curve(y_true, p_pos, drop_intermediate=False)
    # sklearn's first point (+inf: nothing positive) is no score; clipped to 1.0 it would flag
    # the images scored exactly 1.0, and the quoted operating point would not be the one used.
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]
    if rule == "youden":
        i = int(np.argmax(tpr - fpr))
        why = f"Youden's J on {on}: sensitivity {tpr[i]:.3f}, specificity {1 - fpr[i]:.3f}"
    elif rule == "sensitivity":
        ok = np.flatnonzero(tpr >= target_sensitivity)
        i = int(ok[0])
        why = (f"highest threshold with {on} sensitivity >= {target_sensitivity:.2f}: "
               f"sensitivity {tpr[i]:.3f}, specificity {1 - fpr[i]:.3f}")
    elif rule == "f1":
        pos = y_true.sum()
        tp = tpr * pos
        fp = fpr * (len(y_true) - pos)
        f1 = 2 * tp / np.maximum(2 * tp + fp + (pos - tp), 1e-12)
        i = int(np.argmax(f1))
        why = f"maximum F1 on {on} ({f1[i]:.3f})"
    else:
        raise ValueError(f"unknown threshold rule {rule!r}")
    return float(thr[i]), why
