"""A headline for an evaluation a person reads first: the key figures in one sentence, and
warnings where the numbers say the model should not be trusted (a collapsed model that
predicts one class, performance near chance, many test images flagged out-of-distribution)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medcls.evaluation.result import EvaluationResult
from medcls.metrics.classification import metric_name

# Where the answers stop being worth reading: AUC near 0.5, kappa near 0 (agreement by chance).
CHANCE_AUC = 0.6
CHANCE_QWK = 0.2
COLLAPSED_SHARE = 0.95  # share of all predictions falling on one class
MANY_FLAGGED = 0.2  # share of the test split flagged out-of-distribution
LOW_RECALL = 0.6  # a class whose images are called something else this often is mostly missed


@dataclass(frozen=True)
class Verdict:
    """``level``: "ok", "caution" or "unusable"; ``headline``: one sentence; ``warnings``: one line each."""

    level: str
    headline: str
    warnings: list[str] = field(default_factory=list)


def verdict(result: EvaluationResult) -> Verdict:
    """Judge ``result`` by fixed rules stated in this module (never by looking for a good number)."""
    m, warnings, unusable = result.metrics, [], False
    cm = np.asarray(result.confusion_matrix)
    predicted = cm.sum(axis=0)
    true_share = cm.sum(axis=1).max() / max(cm.sum(), 1)
    top = int(predicted.argmax())
    share = predicted[top] / max(predicted.sum(), 1)
    if share >= COLLAPSED_SHARE and true_share < COLLAPSED_SHARE:
        unusable = True
        warnings.append(f"collapsed: {share:.0%} of test images are predicted {result.classes[top]} "
                        f"(the most common true class is {true_share:.0%} of them)")
    auc_key = "roc_auc" if "roc_auc" in m else "ovr_auc"
    auc = m.get(auc_key)
    if auc is not None and np.isfinite(auc) and auc < CHANCE_AUC:
        unusable = True
        warnings.append(f"near chance: {metric_name(auc_key)} {auc:.3f} (below {CHANCE_AUC})")
    if "qwk" in m and m["qwk"] < CHANCE_QWK:
        unusable = True
        warnings.append(f"near chance: {metric_name('qwk')} {m['qwk']:.3f} (below {CHANCE_QWK})")
    for k, row in enumerate(cm):
        if not unusable and row.sum() and row[k] / row.sum() < LOW_RECALL:
            warnings.append(f"{1 - row[k] / row.sum():.0%} of {result.classes[k]} test images are predicted as "
                            f"another class")
    flagged = (result.ood or {}).get("test", {}).get("flagged")
    if flagged is not None and flagged > MANY_FLAGGED:
        warnings.append(f"{flagged:.0%} of the test split is flagged out-of-distribution: the test images differ "
                        f"from the training images")
    level = "unusable" if unusable else "caution" if warnings else "ok"
    return Verdict(level, _headline(result), warnings)


def _headline(result: EvaluationResult) -> str:
    m, ci = result.metrics, result.ci95

    def fig(key: str) -> str:
        lo_hi = ci.get(key)
        return f"{metric_name(key).lower()} {m[key]:.1%}" + (f" ({lo_hi[0]:.1%}-{lo_hi[1]:.1%})" if lo_hi else "")

    keys = ["accuracy", "recall", "specificity"] if "specificity" in m else ["accuracy", "qwk", "balanced_accuracy"]
    figures = ", ".join(fig(k) if k != "qwk" else f"{metric_name(k).lower()} {m[k]:.3f}" for k in keys if k in m)
    return f"On {result.n_test} test images: {figures}."
