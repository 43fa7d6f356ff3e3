import json
import math
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

from cotune.evaluate import Metric, calibration_bins, ece, evaluate, metric, monitored_metric, part_loss, primary_metric


def _random_probs(rng, n, k):
    logits = rng.normal(size=(n, k)) * 2
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def _assert_plain(obj):
    """No numpy types, no NaN anywhere in the result."""
    if isinstance(obj, dict):
        for v in obj.values():
            _assert_plain(v)
    elif isinstance(obj, list):
        for v in obj:
            _assert_plain(v)
    else:
        assert obj is None or type(obj) in (int, float, str, bool), type(obj)
        if isinstance(obj, float):
            assert math.isfinite(obj)


@pytest.mark.parametrize("k", [2, 4])
def test_matches_sklearn(k):
    rng = np.random.default_rng(k)
    n = 300
    y = rng.integers(0, k, n)
    p = _random_probs(rng, n, k)
    pred = p.argmax(1)
    r = evaluate(y, p, "binary" if k == 2 else "multiclass")
    assert r["n"] == n
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert r["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert r["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert r["f1_weighted"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert r["precision_macro"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert r["recall_weighted"] == pytest.approx(skm.recall_score(y, pred, average="weighted"))
    assert r["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=list(range(k))))
    expected_auc = (skm.roc_auc_score(y, p[:, 1]) if k == 2
                    else skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert r["roc_auc"] == pytest.approx(expected_auc)
    assert np.array_equal(r["confusion_matrix"], skm.confusion_matrix(y, pred))
    f1s = skm.f1_score(y, pred, average=None)
    assert [c["f1"] for c in r["per_class"]] == pytest.approx(list(f1s))
    assert [c["support"] for c in r["per_class"]] == list(np.bincount(y, minlength=k))
    _assert_plain(r)
    json.dumps(r, allow_nan=False)


def test_perfect_predictions():
    y = np.array([0, 1, 2, 2, 1, 0])
    p = np.eye(3)[y]
    r = evaluate(y, p, "multiclass", classes=["a", "b", "c"])
    assert r["accuracy"] == 1.0 and r["f1_macro"] == 1.0 and r["roc_auc"] == 1.0
    assert r["ece"] == pytest.approx(0.0)
    assert r["log_loss"] == pytest.approx(0.0, abs=1e-9)
    assert [c["class"] for c in r["per_class"]] == ["a", "b", "c"]
    assert np.array_equal(r["confusion_matrix"], np.diag([2, 2, 2]))


def test_ece_calibrated_vs_overconfident():
    rng = np.random.default_rng(0)
    n, k = 40000, 3
    p = _random_probs(rng, n, k)
    y = (rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1)  # labels sampled from p
    assert ece(y, p) < 0.02
    wrong = np.full((1000, 2), [0.99, 0.01])
    assert ece(np.ones(1000, dtype=int), wrong) == pytest.approx(0.99)


def test_calibration_bins():
    y = np.array([0, 1, 1, 0])
    p = np.array([[0.95, 0.05], [0.95, 0.05], [0.4, 0.6], [0.6, 0.4]])
    cal = calibration_bins(y, p, n_bins=10)
    assert len(cal["bin_lower"]) == len(cal["count"]) == 10
    assert sum(cal["count"]) == 4 and cal["count"][9] == 2 and cal["count"][5] == 2
    assert cal["accuracy"][9] == 0.5 and cal["confidence"][9] == pytest.approx(0.95)
    assert cal["confidence"][0] is None and cal["accuracy"][0] is None
    assert cal["bin_lower"][0] == 0.0 and cal["bin_upper"][-1] == 1.0
    json.dumps(cal, allow_nan=False)


def test_absent_class_and_single_class():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 50)  # class 2 never appears in y_true
    p = _random_probs(rng, 50, 3)
    r = evaluate(y, p, "multiclass")
    assert r["per_class"][2]["support"] == 0 and r["per_class"][2]["recall"] is None
    assert r["roc_auc"] is None or 0.0 <= r["roc_auc"] <= 1.0
    assert sum(map(sum, r["confusion_matrix"])) == 50
    assert len(r["confusion_matrix"]) == 3
    _assert_plain(r)
    r1 = evaluate(np.zeros(10, dtype=int), _random_probs(rng, 10, 2), "binary")
    assert r1["roc_auc"] is None
    json.dumps(r1, allow_nan=False)


def test_regression():
    rng = np.random.default_rng(2)
    y = rng.normal(size=200)
    pred = y + rng.normal(scale=0.1, size=200)
    r = evaluate(y, pred[:, None], "regression")
    assert r["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)))
    assert r["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert r["r2"] == pytest.approx(skm.r2_score(y, pred))
    q = r["residual_quantiles"]
    assert list(q) == ["p5", "p25", "p50", "p75", "p95"]
    assert q["p5"] <= q["p50"] <= q["p95"]
    assert evaluate(y, y, "regression")["rmse"] == 0.0
    assert evaluate([1.0, 1.0], [1.0, 2.0], "regression")["r2"] is None  # constant target
    _assert_plain(r)
    json.dumps(r, allow_nan=False)


def test_primary_metric():
    assert primary_metric("binary") == Metric("accuracy", True)
    assert primary_metric("multiclass") == Metric("accuracy", True)
    assert primary_metric("regression") == Metric("rmse", False)
    assert primary_metric("regression").direction == "minimize" and primary_metric("binary").history_key == "val_accuracy"
    assert monitored_metric("binary", "loss") == Metric("loss", False) and monitored_metric("regression") == Metric("rmse", False)
    assert Metric("rmse", False).better(0.1, 0.2) and not Metric("accuracy", True).better(0.1, 0.2)
    with pytest.raises(ValueError, match="metric name"):
        metric("accuracyy")


def test_part_loss_is_log_loss_or_mse():
    assert part_loss({"log_loss": 0.3, "log_loss_se": 0.01, "accuracy": 0.9}) == (0.3, 0.01)
    assert part_loss({"rmse": 2.0, "mse_se": 0.5}) == (4.0, 0.5)


@pytest.mark.parametrize("args, match", [
    (([0, 1], np.full((3, 2), 0.5), "binary"), "equally long"),
    (([0, 1], np.full((2, 2), 0.5), "ranking"), "'task'"),
    (([0, 1], np.full((2, 3), 1 / 3), "binary"), "shape"),
    (([0, 1], np.full(2, 0.5), "multiclass"), "2-D"),
    (([0, 1], np.full((2, 2), 0.7), "binary"), "summing to 1"),
    (([0, 5], np.full((2, 2), 0.5), "binary"), r"codes in 0\.\.1"),
    (([1.0, 2.0], [1.0], "regression"), "equally long"),
    (([1.0, 2.0], np.ones((2, 2)), "regression"), r"shapes \(2,\) and \(2, 2\)"),
    ((["a", "b"], np.full((2, 2), 0.5), "binary"), "integer class codes"),
    (([0.0, np.nan], [0.0, 1.0], "regression"), "finite"),
])
def test_validation(args, match):
    with pytest.raises(ValueError, match=match):
        evaluate(*args)


def test_classes_length_checked():
    with pytest.raises(ValueError, match="classes"):
        evaluate([0, 1], np.full((2, 2), 0.5), "binary", classes=["a"])


def test_no_torch_import():
    import subprocess
    code = "import sys, cotune.evaluate; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_loss_standard_errors_follow_the_rows():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 400)
    p = np.full((400, 3), 0.05)
    p[np.arange(400), y] = 0.9
    r = evaluate(y, p, "multiclass")
    assert r["log_loss_se"] == pytest.approx(0.0, abs=1e-12)  # every row has the same loss
    wrong = p.copy()
    wrong[0] = [1e-9, 1e-9, 1.0 - 2e-9] if y[0] != 2 else [1.0 - 2e-9, 1e-9, 1e-9]  # one confidently wrong row
    w = evaluate(y, wrong, "multiclass")
    rows = -np.log(np.clip(wrong[np.arange(400), y], 1e-15, 1.0))
    assert w["log_loss_se"] == pytest.approx(rows.std(ddof=1) / np.sqrt(400))
    assert w["log_loss_se"] > 0.3 * (w["log_loss"] - r["log_loss"])  # that one row is most of the change
    resid = rng.normal(size=300)
    g = evaluate(resid, np.zeros(300), "regression")
    assert g["mse_se"] == pytest.approx((resid ** 2).std(ddof=1) / np.sqrt(300))
    assert evaluate([1.0], [2.0], "regression")["mse_se"] is None
