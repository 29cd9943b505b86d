"""Ordinal decisions (#17 item 4): cut-points on the expected grade, fitted on validation for QWK."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medcls.metrics.ordinal import expected_grade, fit_cutpoints, grade_decision, qwk


def _probs_around(grade: np.ndarray, k: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities whose expected grade is near ``grade`` (a softmax over distances to it)."""
    logits = -((np.arange(k)[None, :] - grade[:, None]) ** 2) / spread + rng.normal(0, 0.1, (len(grade), k))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def test_midpoint_cuts_round_the_expected_grade():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=400)
    pred = grade_decision(probs, [0.5, 1.5, 2.5, 3.5])
    assert np.array_equal(pred, np.clip(np.floor(expected_grade(probs) + 0.5), 0, 4).astype(int))
    assert np.array_equal(grade_decision(probs, [-1, -1, -1, -1]), np.full(400, 4))


@pytest.mark.parametrize("shift", [0.45, -0.3])
def test_cutpoints_undo_a_biased_grade(shift):
    """A model whose expected grade is off by ``shift``: the midpoint cuts lose kappa, the fitted
    cuts move by about the shift and recover the best kappa a brute-force search over cuts finds."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    probs = _probs_around(np.clip(y + shift + rng.normal(0, 0.15, len(y)), 0, 2), 3, 0.5, rng)
    grade = expected_grade(probs)
    cuts, reason = fit_cutpoints(y, probs)
    fitted = qwk(y, grade_decision(probs, cuts), 3)
    midpoints = qwk(y, grade_decision(probs, [0.5, 1.5]), 3)
    grid = np.unique(np.quantile(grade, np.linspace(0, 1, 50)))
    brute = max(qwk(y, np.searchsorted([a, b], grade, side="right"), 3)
                for a, b in itertools.combinations(grid, 2))
    assert fitted > midpoints + 0.02
    assert fitted >= brute - 1e-9
    assert cuts == sorted(cuts) and f"-> {fitted:.3f}" in reason


def test_qwk_matches_sklearn_and_fit_never_loses():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 200)
    probs = rng.dirichlet(np.ones(5), size=200)  # an uninformative model
    pred = grade_decision(probs, [0.5, 1.5, 2.5, 3.5])
    assert qwk(y, pred, 5) == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"))
    good = np.where(rng.random(200) < 0.7, y, rng.integers(0, 5, 200))
    assert qwk(y, good, 5) == pytest.approx(cohen_kappa_score(y, good, weights="quadratic"))
    assert qwk(np.zeros(5, int), np.zeros(5, int), 5) == 0.0
    cuts, _ = fit_cutpoints(y, probs)
    assert qwk(y, grade_decision(probs, cuts), 5) >= qwk(y, pred, 5)
