"""The numbers behind the clinical decision: operating-point rules, classification
metrics, bootstrap intervals, calibration and the duplicate grouping that keeps
copies of one image out of two splits.

Each number is checked against an independent computation (brute force over every
candidate threshold, a hand-written formula, a naive union-find) and, where it
has one, against scikit-learn. Fast: no training, no data folder, no browser.
Property tests are derandomized, so every run draws the same examples.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from medcls.data.audit import Audit, AuditSummary, DuplicateGroup, deduplicate
from medcls.data.datasets import DataError, DatasetIndex, Sample
from medcls.data.split import make_split, merge_groups
from medcls.metrics.calibration import expected_calibration_error, fit_temperature, nll
from medcls.metrics.classification import binary_metrics, bootstrap_ci, multiclass_metrics, per_class_table
from medcls.metrics.threshold import choose_threshold

PROPERTY = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# Scores on a coarse grid, so that ties between positives and negatives are common;
# 1.0 and 0.0 included (a float32 sigmoid saturates to exactly 1.0).
GRID = [i / 10 for i in range(11)]


@st.composite
def labelled_scores(draw, grid: bool) -> tuple[np.ndarray, np.ndarray]:
    """Binary labels with both classes present, and scores (tied when ``grid``)."""
    n = draw(st.integers(2, 40))
    y = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    if len(np.unique(y)) < 2:
        y[0], y[1] = 0, 1
    score = st.sampled_from(GRID) if grid else st.floats(0, 1, allow_nan=False)
    p = np.array(draw(st.lists(score, min_size=n, max_size=n)), dtype=np.float64)
    return y, p


def operating_point(y: np.ndarray, p: np.ndarray, t: float) -> tuple[float, float]:
    """(sensitivity, specificity) of ``p >= t``, counted by hand."""
    pred = p >= t
    return float(pred[y == 1].mean()), float((~pred[y == 0]).mean())


def f1_at(y: np.ndarray, p: np.ndarray, t: float) -> float:
    pred = p >= t
    tp = int((pred & (y == 1)).sum())
    return 2 * tp / (2 * tp + int((pred & (y == 0)).sum()) + int((~pred & (y == 1)).sum()))


def quoted_point(why: str) -> tuple[float, float]:
    """The (sensitivity, specificity) an explanation quotes: it must be the point the threshold realises."""
    quoted = re.search(r"sensitivity (\d\.\d{3}), specificity (\d\.\d{3})", why)
    assert quoted, why
    return float(quoted[1]), float(quoted[2])


# --- operating-point rules ----------------------------------------------------------------

@PROPERTY
@given(data=st.one_of(labelled_scores(grid=True), labelled_scores(grid=False)))
def test_youden_maximises_j_over_every_distinct_score(data):
    y, p = data
    t, why = choose_threshold(y, p, "youden")
    sens, spec = operating_point(y, p, t)
    brute = max(sum(operating_point(y, p, s)) - 1 for s in np.unique(p))
    assert sens + spec - 1 == pytest.approx(brute, abs=1e-12)
    # scikit-learn's ROC curve has the same best J (the best point is always a vertex)
    fpr, tpr, _ = skm.roc_curve(y, p)
    assert brute == pytest.approx(float(np.max(tpr - fpr)), abs=1e-12)
    assert quoted_point(why) == (round(sens, 3), round(spec, 3))


@PROPERTY
@given(data=st.one_of(labelled_scores(grid=True), labelled_scores(grid=False)),
       target=st.sampled_from([0.05, 0.25, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0]))
def test_sensitivity_rule_gives_the_highest_threshold_that_reaches_the_target(data, target):
    y, p = data
    t, why = choose_threshold(y, p, "sensitivity", target_sensitivity=target)
    reaching = [s for s in np.unique(p) if operating_point(y, p, s)[0] >= target]
    assert t == max(reaching)
    sens, spec = operating_point(y, p, t)
    assert sens >= target
    assert quoted_point(why) == (round(sens, 3), round(spec, 3))


def test_threshold_never_stands_for_nothing_positive():
    """A model no better than chance has J <= 0 everywhere. The rule used to pick sklearn's
    "+inf" point (nothing positive, J = 0) and return it clipped to 1.0, which flags the
    negative scored exactly 1.0 (a saturated float32 sigmoid): J = -0.5, not the quoted 0."""
    y, p = np.array([0, 1, 0]), np.array([0.0, 0.0, 1.0])
    t, why = choose_threshold(y, p, "youden")
    sens, spec = operating_point(y, p, t)
    assert sens + spec - 1 == 0.0 and quoted_point(why) == (sens, spec)
    t, why = choose_threshold(y, p, "sensitivity", target_sensitivity=0.0)
    assert t == 1.0 and quoted_point(why) == operating_point(y, p, 1.0)


def test_sensitivity_rule_sees_points_that_sklearn_drops_by_default():
    """Positives ranked above every negative put the ROC points for 1, 2 and 3 positives
    on one vertical line: ``roc_curve``'s default drops them as collinear, and the rule
    then jumps to the threshold that catches all four (0.6) instead of 0.8."""
    y = np.array([1, 1, 1, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    _, _, kept_by_default = skm.roc_curve(y, p)
    assert 0.8 not in kept_by_default  # the case does exercise the dropped point
    t, _ = choose_threshold(y, p, "sensitivity", target_sensitivity=0.5)
    assert t == 0.8
    assert choose_threshold(y, p, "sensitivity", target_sensitivity=0.75)[0] == 0.7


def test_sensitivity_rule_with_tied_scores():
    # at 0.7 one negative ties with two positives: the threshold is 0.7, all three flagged
    y = np.array([1, 1, 0, 1, 0, 1])
    p = np.array([0.9, 0.7, 0.7, 0.7, 0.3, 0.2])
    assert choose_threshold(y, p, "sensitivity", target_sensitivity=0.75)[0] == 0.7
    assert choose_threshold(y, p, "sensitivity", target_sensitivity=0.76)[0] == 0.2
    assert choose_threshold(y, p, "sensitivity", target_sensitivity=0.25)[0] == 0.9


@PROPERTY
@given(data=st.one_of(labelled_scores(grid=True), labelled_scores(grid=False)))
def test_f1_rule_maximises_f1_over_every_distinct_score(data):
    y, p = data
    t, why = choose_threshold(y, p, "f1")
    brute = max(f1_at(y, p, s) for s in np.unique(p))
    assert f1_at(y, p, t) == pytest.approx(brute, abs=1e-12)
    assert f"({brute:.3f})" in why
    assert f1_at(y, p, t) == pytest.approx(skm.f1_score(y, (p >= t).astype(int)), abs=1e-12)


def test_fixed_rule_and_one_class_validation():
    y = np.array([0, 1, 1, 0])
    p = np.array([0.1, 0.9, 0.8, 0.3])
    assert choose_threshold(y, p, "fixed", fixed=0.37)[0] == 0.37
    for rule in ("youden", "sensitivity", "f1"):
        t, why = choose_threshold(np.ones(4, dtype=int), p, rule)
        assert t == 0.5 and "one class" in why
        assert choose_threshold(np.zeros(4, dtype=int), p, rule)[0] == 0.5
    with pytest.raises(ValueError, match="unknown threshold rule 'median'"):
        choose_threshold(y, p, "median")


# --- binary and multi-class metrics --------------------------------------------------------

def mann_whitney_auc(y: np.ndarray, p: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting one half."""
    pos, neg = p[y == 1][:, None], p[y == 0][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


@PROPERTY
@given(data=st.one_of(labelled_scores(grid=True), labelled_scores(grid=False)), t=st.sampled_from(GRID + [0.55]))
def test_binary_metrics_match_sklearn(data, t):
    y, p = data
    m = binary_metrics(y, p, t)
    pred = (p >= t).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, zero_division=0))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0, zero_division=0))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
    assert m["roc_auc"] == pytest.approx(mann_whitney_auc(y, p))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, p))
    assert (m["recall"], m["specificity"]) == pytest.approx(operating_point(y, p, t))


def test_pr_auc_is_average_precision_by_hand():
    # ranked: +, -, +, +, -  -> AP = (1/3)(1/1) + (1/3)(2/3) + (1/3)(3/4)
    y = np.array([1, 0, 1, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    assert binary_metrics(y, p, 0.5)["pr_auc"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)


def test_binary_metrics_with_one_class_have_no_auc():
    m = binary_metrics(np.zeros(5, dtype=int), np.linspace(0.1, 0.9, 5), 0.5)
    assert np.isnan(m["roc_auc"]) and np.isnan(m["pr_auc"])
    assert m["specificity"] == pytest.approx(0.4) and m["recall"] == 0.0 and m["f1"] == 0.0


def quadratic_kappa(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    """1 - sum(W * O) / sum(W * E), W_ij = (i - j)^2: grade distances, not rank distances."""
    observed = np.zeros((k, k))
    np.add.at(observed, (y, pred), 1)
    expected = np.outer(observed.sum(1), observed.sum(0)) / len(y)
    w = (np.arange(k)[:, None] - np.arange(k)[None, :]) ** 2
    return 1 - (w * observed).sum() / (w * expected).sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multiclass_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    k, n = 5, 400
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k)) + 1.5 * np.eye(k)[y]  # better than chance
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = probs.argmax(1)
    m = multiclass_metrics(y, probs, ordinal=True, referable_from=2)
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    assert m["balanced_accuracy"] == pytest.approx(np.mean([(pred[y == c] == c).mean() for c in range(k)]))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    # macro one-vs-rest AUC: the mean of the classes' binary AUCs
    assert m["ovr_auc"] == pytest.approx(np.mean([mann_whitney_auc((y == c).astype(int), probs[:, c])
                                                  for c in range(k)]))
    assert m["qwk"] == pytest.approx(skm.cohen_kappa_score(y, pred, weights="quadratic"))
    assert m["qwk"] == pytest.approx(quadratic_kappa(y, pred, k))
    ref, ref_pred = y >= 2, pred >= 2
    assert m["referable_sensitivity"] == pytest.approx((ref & ref_pred).sum() / ref.sum())
    assert m["referable_specificity"] == pytest.approx((~ref & ~ref_pred).sum() / (~ref).sum())
    assert m["referable_auc"] == pytest.approx(mann_whitney_auc(ref.astype(int), probs[:, 2:].sum(1)))


def test_qwk_weighs_grade_distance_when_a_grade_is_never_used():
    # grade 2 of 0..3 appears nowhere: a 1 <-> 3 confusion is still two grades apart
    y = np.array([0, 0, 1, 1, 3, 3, 3, 1])
    pred = np.array([0, 1, 1, 3, 3, 3, 1, 0])
    probs = np.eye(4)[pred] * 0.7 + 0.075
    m = multiclass_metrics(y, probs, ordinal=True)
    assert m["qwk"] == pytest.approx(quadratic_kappa(y, pred, 4))
    assert m["qwk"] != pytest.approx(skm.cohen_kappa_score(y, pred, weights="quadratic"))  # labels by rank
    assert np.isnan(m["ovr_auc"])  # a class without examples has no one-vs-rest AUC
    assert "referable_sensitivity" not in m


def test_per_class_table_by_hand():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 0, 1, 1, 2, 2, 2, 2, 0])
    rows = per_class_table(y, pred, ["a", "b", "c", "never"])
    assert [r["class"] for r in rows] == ["a", "b", "c", "never"]
    assert [r["support"] for r in rows] == [3, 2, 4, 0]
    assert [r["precision"] for r in rows] == pytest.approx([2 / 3, 1 / 2, 3 / 4, 0.0])
    assert [r["recall"] for r in rows] == pytest.approx([2 / 3, 1 / 2, 3 / 4, 0.0])
    assert [r["f1"] for r in rows] == pytest.approx([2 / 3, 1 / 2, 3 / 4, 0.0])


# --- bootstrap intervals -------------------------------------------------------------------

def test_bootstrap_ci_covers_the_true_accuracy_at_about_the_stated_rate():
    rng = np.random.default_rng(0)
    covered, widths = 0, []
    for _ in range(200):
        correct = rng.random(200) < 0.8  # each image right with probability 0.8
        low, high = bootstrap_ci(lambda i: {"accuracy": correct[i].mean()}, 200, draws=400,
                                 seed=int(rng.integers(1 << 31)))["accuracy"]
        assert low <= correct.mean() <= high
        covered += low <= 0.8 <= high
        widths.append(high - low)
    assert 180 <= covered <= 198  # 95% nominal: 90-99% over 200 repetitions
    # coverage alone hardly tells 95% from 90%; the width does: 2 * 1.96 * sqrt(0.8 * 0.2 / 200)
    assert np.mean(widths) == pytest.approx(2 * 1.96 * np.sqrt(0.8 * 0.2 / 200), rel=0.05)


def test_bootstrap_ci_is_seeded_skips_undefined_values_and_narrows_with_level():
    rng = np.random.default_rng(1)
    y = (rng.random(30) < 0.1).astype(int)  # few positives: some resamples have none
    p = rng.random(30)

    def fn(i):
        return {**binary_metrics(y[i], p[i], 0.5), "name": "not a number"}

    ci = bootstrap_ci(fn, 30, draws=100, seed=3)
    assert ci == bootstrap_ci(fn, 30, draws=100, seed=3)
    assert ci != bootstrap_ci(fn, 30, draws=100, seed=4)
    assert "name" not in ci and np.isfinite(ci["roc_auc"]).all()
    narrow = bootstrap_ci(fn, 30, draws=100, seed=3, level=0.5)
    assert ci["accuracy"][0] <= narrow["accuracy"][0] <= narrow["accuracy"][1] <= ci["accuracy"][1]


# --- calibration ---------------------------------------------------------------------------

def test_ece_by_hand():
    # ten predictions at confidence 0.9, six of them right: |0.6 - 0.9|
    probs = np.tile([0.9, 0.1], (10, 1))
    y = np.array([0] * 6 + [1] * 4)
    assert expected_calibration_error(y, probs) == pytest.approx(0.3)
    # two bins, half the images each: 0.5 * |2/4 - 0.7| + 0.5 * |4/4 - 0.95|
    probs = np.array([[0.7, 0.2, 0.1]] * 4 + [[0.02, 0.95, 0.03]] * 4)
    y = np.array([0, 0, 1, 2, 1, 1, 1, 1])
    assert expected_calibration_error(y, probs) == pytest.approx(0.5 * 0.2 + 0.5 * 0.05)
    # bins are (lo, hi]: confidence 1 is counted, and 0.5 (an edge of ten bins) is not
    # pooled with 0.55; a wrong answer at confidence 1 costs its full weight
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.55, 0.45]])
    y = np.array([1, 1, 0])  # wrong, wrong (the tie goes to class 0), right
    assert expected_calibration_error(y, probs, bins=10) == pytest.approx((1 + 0.5 + 0.45) / 3)


def test_ece_of_calibrated_data_is_near_zero_and_of_overconfident_data_is_not():
    rng = np.random.default_rng(0)
    n, k = 100_000, 3
    probs = rng.dirichlet(np.ones(k), n)
    y = (rng.random(n)[:, None] > probs.cumsum(1)).sum(1)  # y ~ Categorical(probs): calibrated
    assert expected_calibration_error(y, probs) < 0.01
    sharp = probs ** 3 / (probs ** 3).sum(1, keepdims=True)  # same ranking, too confident
    assert expected_calibration_error(y, sharp) > 0.05


def test_nll_by_hand():
    z = np.array([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    y = np.array([0, 2])
    for t in (1.0, 2.0):
        log_p = z / t - np.log(np.exp(z / t).sum(1, keepdims=True))
        assert nll(z, y, t) == pytest.approx(-np.mean(log_p[[0, 1], y]))
    zb = np.array([[3.0], [-1.0], [0.2]])
    yb = np.array([1, 1, 0])
    q = 1 / (1 + np.exp(-zb[:, 0] / 2))
    assert nll(zb, yb, 2.0) == pytest.approx(-np.mean(yb * np.log(q) + (1 - yb) * np.log(1 - q)))


def softmax_model(seed: int, n: int, k: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / temperature) (sigmoid for k == 1)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4, (n, k))
    if k == 1:
        return z, (rng.random(n) < 1 / (1 + np.exp(-z[:, 0] / temperature))).astype(np.int64)
    p = np.exp(z / temperature)
    p /= p.sum(1, keepdims=True)
    return z, (rng.random(n)[:, None] > p.cumsum(1)).sum(1)


@pytest.mark.parametrize("k", [1, 4])
def test_fit_temperature_recovers_the_temperature_of_the_model(k):
    z, y = softmax_model(0, 20_000, k, temperature=2.0)
    t = fit_temperature(z, y)
    assert t == pytest.approx(2.0, rel=0.06)  # seeds 0-4 give 1.96-2.05 at this size
    assert nll(z, y, t) < nll(z, y, 1.0) and nll(z, y, t) <= nll(z, y, 2.0) + 1e-9
    # labels as a data loader may hand them over: the same fit
    assert fit_temperature(z, y.astype(np.int32)) == pytest.approx(t, rel=1e-9)
    assert nll(z, y.astype(np.int32), t) == nll(z, y, t)


@settings(PROPERTY, max_examples=20)  # each example runs L-BFGS: the costliest property here
@given(seed=st.integers(0, 2 ** 32 - 1), n=st.integers(1, 50), k=st.sampled_from([1, 2, 3]),
       scale=st.sampled_from([0.01, 1.0, 30.0]), true_t=st.sampled_from([0.3, 1.0, 5.0]))
def test_fit_temperature_is_never_worse_than_no_scaling(seed, n, k, scale, true_t):
    rng = np.random.default_rng(seed)
    z, y = softmax_model(seed, n, k, true_t)
    z = z * scale
    if rng.random() < 0.3:  # and labels unrelated to the logits
        y = rng.integers(0, max(k, 2), n)
    t = fit_temperature(z, y.astype(np.int32))
    assert t > 0 and np.isfinite(t)
    assert nll(z, y, t) <= nll(z, y, 1.0)


# --- duplicate groups and splits -----------------------------------------------------------

ROOT = Path("/nonexistent/data")  # the split logic never opens the files


def sample(i: int, group: str, label: int = 0, given: str | None = None) -> Sample:
    return Sample(ROOT / f"{i}.png", label, group, given)


def test_linked_groups_merge_transitively():
    samples = [sample(0, "p1"), sample(1, "p2"), sample(2, "p3"), sample(3, "p4"), sample(4, "p1"),
               sample(5, "p5")]
    # 1~2 and 2~3 link p2, p3, p4 (transitively); image 4 shares patient p1 with image 0,
    # and 0~1 pulls patient p1, both images, in as well; p5 is alone
    merged = merge_groups(samples, [[1, 2], [2, 3], [0, 1]])
    groups = [s.group for s in merged]
    assert len(set(groups[:5])) == 1 and groups[0] == "dup:p1"
    assert groups[5] == "p5"
    assert [(s.path, s.label, s.given_split) for s in merged] == [(s.path, s.label, s.given_split)
                                                                  for s in samples]


def test_singletons_and_patients_keep_their_names():
    samples = [sample(0, "p1"), sample(1, "p1"), sample(2, "p2")]
    assert [s.group for s in merge_groups(samples, [])] == ["p1", "p1", "p2"]
    assert [s.group for s in merge_groups(samples, [[0, 1], [2]])] == ["p1", "p1", "p2"]  # one patient anyway


def test_a_test_folder_numbers_its_patients_on_its_own():
    samples = [sample(0, "p1"), sample(1, "p1", given="test"), sample(2, "p2"), sample(3, "p9", given="test")]
    merged = merge_groups(samples, [])
    assert [s.group for s in merged] == ["p1", "p1", "p2", "p9"]  # names kept, but ...
    linked = merge_groups(samples, [[2, 3]])
    assert linked[2].group == linked[3].group != linked[1].group  # ... only a link joins across folders
    assert linked[0].group == "p1"
    pulled = merge_groups(samples, [[0, 2]])  # training patient p1 merges with p2; test patient p1 does not
    assert pulled[0].group == pulled[2].group == "dup:p1" and pulled[1].group == "p1"


def naive_components(keys: list[str], links: list[list[int]]) -> list[int]:
    """Union-find by repeated relabelling: the reference for merge_groups."""
    label = list(range(len(keys)))
    pairs = [(i, j) for i in range(len(keys)) for j in range(i) if keys[i] == keys[j]]
    pairs += [(m[0], j) for m in links for j in m[1:]]
    changed = True
    while changed:
        changed = False
        for i, j in pairs:
            low = min(label[i], label[j])
            if label[i] != low or label[j] != low:
                label[i] = label[j] = low
                changed = True
    return label


@st.composite
def grouped_samples(draw, given_test: bool) -> tuple[list[Sample], list[list[int]]]:
    n = draw(st.integers(12, 40))
    samples = [sample(i, f"p{draw(st.integers(0, n // 2))}", draw(st.integers(0, 1)),
                      "test" if given_test and draw(st.booleans()) else None) for i in range(n)]
    links = draw(st.lists(st.lists(st.integers(0, n - 1), min_size=1, max_size=3, unique=True), max_size=n // 3))
    return samples, links


@PROPERTY
@given(data=grouped_samples(given_test=False), seed=st.integers(0, 100))
def test_merged_groups_are_the_components_and_no_group_straddles_splits(data, seed):
    samples, links = data
    merged = merge_groups(samples, links)
    reference = naive_components([s.group for s in samples], links)
    for i in range(len(samples)):
        for j in range(i):
            assert (merged[i].group == merged[j].group) == (reference[i] == reference[j])
    index = DatasetIndex("synthetic", ROOT, ["a", "b"], merged, "grayscale")
    try:
        splits = make_split(index, val_fraction=0.2, test_fraction=0.2, seed=seed)
    except DataError:
        reject()  # too few groups for three splits: make_split says so itself
    where = {}
    for name, items in splits.items():
        for s in items:
            assert where.setdefault(s.group, name) == name, f"group {s.group} in {where[s.group]} and {name}"
    assert sorted(s.path for items in splits.values() for s in items) == sorted(s.path for s in samples)
    split_of = {s.path: name for name, items in splits.items() for s in items}
    for m in links:
        assert len({split_of[samples[i].path] for i in m}) == 1


def audit_of(index: DatasetIndex, links: list[list[int]]) -> Audit:
    groups = []
    for gid, members in enumerate((m for m in links if len(m) > 1), start=1):
        labels = sorted({index.samples[i].label for i in members})
        groups.append(DuplicateGroup(gid, sorted(members), "exact", [index.classes[k] for k in labels]))
    counts = dict.fromkeys(["images", "unreadable", "max_distance", "exact_duplicate_sets", "exact_duplicate_images",
                            "exact_redundant_copies", "duplicate_groups", "near_duplicate_groups",
                            "images_in_duplicate_groups", "within_class_groups", "conflict_groups", "conflict_images"], 0)
    summary = AuditSummary(dataset=index.name, root=str(index.root), hash="", conflicts_by_classes={},
                           unreadable_files={}, **counts)
    return Audit(index, groups, summary, [None] * len(index.samples))


@PROPERTY
@given(data=grouped_samples(given_test=True), seed=st.integers(0, 100))
def test_with_a_test_folder_no_duplicate_reaches_both_sides(data, seed):
    samples, links = data
    # links as a duplicate audit reports them: disjoint clusters
    comp = naive_components([str(i) for i in range(len(samples))], links)
    clusters = [[i for i in range(len(samples)) if comp[i] == c] for c in sorted(set(comp))]
    index = DatasetIndex("synthetic", ROOT, ["a", "b"], samples, "grayscale")
    audit = audit_of(index, clusters)
    kept, held, _ = deduplicate(index, audit)
    try:
        splits = make_split(kept, val_fraction=0.25, test_fraction=0.0, seed=seed, train_only=held)
    except DataError:
        reject()
    split_of = {s.path: name for name, items in splits.items() for s in items}
    for g in audit.groups:
        assert len({split_of[samples[i].path] for i in g.members if samples[i].path in split_of}) <= 1
        if g.conflict:  # an image filed under two classes is never evaluated on
            assert not {split_of.get(samples[i].path) for i in g.members} & {"val", "test"}
    where = {}
    for name in ("train", "val"):
        for s in splits[name]:
            assert where.setdefault(s.group, name) == name
