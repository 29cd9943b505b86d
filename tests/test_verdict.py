"""The report's headline verdict: fixed rules that flag a collapsed or chance-level model."""

from medcls.evaluation.result import CalibrationSummary, EvaluationResult
from medcls.evaluation.verdict import verdict
from medcls.metrics.classification import METRIC_NAMES, metric_name


def result(cm, metrics, classes=("NORMAL", "PNEUMONIA"), ood=None) -> EvaluationResult:
    n = sum(map(sum, cm))
    return EvaluationResult(n_test=n, classes=list(classes), metrics=metrics, ci95={"accuracy": [0.8, 0.9]},
                            bootstrap_draws=100, threshold=0.5, threshold_rule="youden", confusion_matrix=cm,
                            per_class=[], calibration=CalibrationSummary(1.0, 0.05, 0.06, 0.3, 0.35), ood=ood)


GOOD = {"accuracy": 0.85, "recall": 0.9, "specificity": 0.8, "roc_auc": 0.93}


def test_a_sound_binary_model_gets_no_warning_and_a_plain_headline():
    judged = verdict(result([[80, 20], [10, 90]], GOOD))
    assert judged.level == "ok" and not judged.warnings
    assert judged.headline == ("On 200 test images: accuracy 85.0% (80.0%-90.0%), sensitivity (recall) 90.0%, "
                               "specificity 80.0%.")


def test_a_model_that_predicts_one_class_is_unusable():
    judged = verdict(result([[1, 99], [0, 100]], {**GOOD, "roc_auc": 0.9}))
    assert judged.level == "unusable" and "collapsed: 100% of test images are predicted PNEUMONIA" in judged.warnings[0]


def test_a_data_set_that_is_one_class_is_not_called_collapsed():
    assert verdict(result([[0, 0], [2, 198]], GOOD)).level == "ok"


def test_chance_level_auc_and_kappa_are_unusable():
    assert verdict(result([[50, 50], [50, 50]], {**GOOD, "roc_auc": 0.55})).level == "unusable"
    grades = [f"g{i}" for i in range(5)]
    cm = [[10 if i == j else 5 for j in range(5)] for i in range(5)]
    judged = verdict(result(cm, {"accuracy": 0.3, "qwk": 0.02, "balanced_accuracy": 0.3, "ovr_auc": 0.7}, grades))
    assert judged.level == "unusable" and any("Quadratic weighted kappa 0.020" in w for w in judged.warnings)


def test_many_flagged_test_images_call_for_caution():
    ood = {"test": {"n": 200, "flagged": 0.3}}
    judged = verdict(result([[80, 20], [10, 90]], GOOD, ood=ood))
    assert judged.level == "caution" and "30% of the test split is flagged" in judged.warnings[0]


def test_every_metric_has_a_plain_name():
    assert metric_name("ovr_auc") == "ROC AUC, one class vs the rest (mean)" and metric_name("new") == "new"
    assert all(name != key for key, name in METRIC_NAMES.items())


def test_a_class_mostly_missed_calls_for_caution():
    judged = verdict(result([[100, 100], [2, 198]], {**GOOD, "specificity": 0.5}))
    assert judged.level == "caution" and judged.warnings == ["50% of NORMAL test images are predicted as another class"]
