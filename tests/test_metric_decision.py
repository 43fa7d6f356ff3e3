"""search.metric (what ranks, stops and prunes), the temperature and the decision threshold: the math, the
bundle round trip through `predict`, the search's final model, and bad input through the real command."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import cotune
from cotune import bundle, evaluate
from cotune.calibrate import (apply_temperature, expected_metric, fit_temperature, temperature_check, threshold_check,
                              tune_threshold)
from cotune.config import from_dict
from cotune.errors import BundleError, ConfigError
from cotune.search.space import search_space

torch.set_num_threads(1)
ENV = {"OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def overconfident(n=2000, k=3, T=2.5, seed=0):
    """Labels drawn from softmax(z) and probabilities softmax(T z): confident by a factor T."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=p) for p in true])
    sharp = np.exp(T * z) / np.exp(T * z).sum(1, keepdims=True)
    return sharp, y, true


def test_temperature_keeps_the_ranking_and_recovers_the_overconfidence():
    p, y, _ = overconfident()
    assert np.allclose(apply_temperature(p, 1.0), p)
    T = fit_temperature(p, y)
    assert 2.0 < T < 3.1  # the probabilities were sharpened 2.5 times
    q = apply_temperature(p, T)
    assert np.allclose(q.sum(1), 1) and (q.argmax(1) == p.argmax(1)).all()
    assert evaluate.score("log_loss", y, q, "multiclass") < evaluate.score("log_loss", y, p, "multiclass")
    assert evaluate.ece(y, q) < evaluate.ece(y, p) / 2


def test_temperature_check_keeps_t_only_when_held_out_log_loss_drops():
    p, y, true = overconfident()
    kept = temperature_check(p, y)
    assert kept["kept"] and kept["val_log_loss_cross_fitted"] < kept["val_log_loss"] and kept["temperature"] > 2
    calibrated = temperature_check(true, y)  # already calibrated: T near 1, kept or not, changes little
    assert 0.8 < calibrated["temperature"] < 1.25
    small = temperature_check(p[:40], y[:40])
    assert small["rows"] == 40 and (small["temperature"] == 1.0) != small["kept"]


def imbalanced(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.1).astype(int)
    s = rng.normal(0, 1, n) + 1.6 * y
    p1 = 1 / (1 + np.exp(-(s - 3.0)))  # probabilities that rarely cross 0.5
    return np.stack([1 - p1, p1], 1), y


def test_threshold_raises_macro_f1_on_an_imbalanced_binary_task():
    p, y = imbalanced()
    t, at, base = tune_threshold(p, y, "f1_macro")
    assert t < 0.5 and at > base + 0.05
    chk = threshold_check(p, y, "f1_macro")
    assert chk["kept"] and chk["threshold"] < 0.5 and chk["val_at_threshold"] > base + 0.05
    assert chk["expected_at_threshold"] >= chk["expected_at_argmax"] and chk["val_cross_fitted"] > base
    assert evaluate.score("f1_macro", y, p, "binary", threshold=t) == pytest.approx(at)
    balanced = np.stack([1 - (y * 0.8 + 0.1), y * 0.8 + 0.1], 1)  # argmax is already perfect
    assert threshold_check(balanced, y, "f1_macro")["val_at_threshold"] == pytest.approx(1.0)
    rng = np.random.default_rng(1)  # calibrated, balanced classes, symmetric: the expected-best cut is about 0.5
    q = rng.uniform(0.05, 0.95, 4000)
    labels = (rng.random(4000) < q).astype(int)
    sym = threshold_check(np.stack([1 - q, q], 1), labels, "balanced_accuracy")
    assert abs(sym["tuned"] - 0.5) < 0.06
    with pytest.raises(ValueError):
        tune_threshold(p, y, "log_loss")


def test_expected_metric_matches_the_labels_of_calibrated_probabilities():
    rng = np.random.default_rng(0)
    q = rng.beta(0.5, 3, 20000)
    y = (rng.random(20000) < q).astype(int)
    p = np.stack([1 - q, q], 1)
    for name in ("f1", "f1_macro", "balanced_accuracy"):
        for t in (0.2, 0.4, 0.6):
            assert expected_metric(p, name, t) == pytest.approx(evaluate.score(name, y, p, "binary", threshold=t), abs=0.02)


def test_evaluate_takes_a_threshold_and_reports_f1_and_brier():
    p, y = imbalanced()
    plain, cut = evaluate.evaluate(y, p, "binary"), evaluate.evaluate(y, p, "binary", threshold=0.2)
    assert plain["log_loss"] == cut["log_loss"] and plain["roc_auc"] == cut["roc_auc"]  # the probabilities are the same
    assert plain["f1"] != cut["f1"] and 0 <= plain["brier"] <= 2
    assert cut["f1_macro"] == pytest.approx(evaluate.score("f1_macro", y, p, "binary", threshold=0.2))
    assert "f1" not in evaluate.evaluate(np.array([0, 1, 2]), np.eye(3), "multiclass")


@pytest.mark.parametrize("name,task,ok", [("f1_macro", "multiclass", True), ("f1", "binary", True),
                                         ("f1", "multiclass", False), ("roc_auc", "regression", False),
                                         ("r2", "binary", False), ("auto", "regression", True)])
def test_primary_metric_checks_the_task(name, task, ok):
    if ok:
        m = evaluate.primary_metric(task, name)
        assert m.name == (("rmse" if task == "regression" else "accuracy") if name == "auto" else name)
    else:
        with pytest.raises(ConfigError, match="search.metric"):
            evaluate.primary_metric(task, name)


def test_label_smoothing_is_not_searched_for_probability_metrics():
    for name, searched in (("accuracy", True), ("log_loss", False), ("roc_auc", False), ("f1_macro", True)):
        cfg = from_dict({"search": {"metric": name}})
        assert ("train.label_smoothing" in search_space(cfg, set(), "tabular", "binary", cpu=True)) is searched


def test_early_stopping_and_history_follow_the_metric(tmp_path):
    cfg = from_dict({"data": {"source": "sklearn:breast_cancer"}, "train": {"epochs": 3}, "runtime": {"progress": False},
                     "search": {"metric": "f1_macro"}, "out": str(tmp_path / "r")})
    res = cotune.train(cfg)
    row = res.train.history[-1]
    assert "val_f1_macro" in row and 0 <= row["val_f1_macro"] <= 1
    assert res.train.best_score == max(r["val_f1_macro"] for r in res.train.history)


def test_decision_round_trips_through_the_bundle_and_predict(tmp_path):
    cfg = from_dict({"data": {"source": "sklearn:breast_cancer"}, "train": {"epochs": 2}, "runtime": {"progress": False},
                     "out": str(tmp_path / "r")})
    run = cotune.train(cfg).path
    b = cotune.load(run)
    X = cotune.pipeline.load_data(cfg).X.iloc[:60]
    raw = b.predict_proba(X)
    assert b.threshold is None and b.decision["temperature"] == 1.0
    bundle.save_decision(run, {"temperature": 2.0, "threshold": 0.9})
    c = cotune.load(run)
    proba = c.predict_proba(X)
    assert np.allclose(proba, apply_temperature(raw, 2.0))
    assert (c.predict(X) == np.asarray(c.classes_, dtype=object)[(proba[:, 1] >= 0.9).astype(int)]).all()
    frame = c.predict_frame(X)
    assert (frame["threshold"] == 0.9).all() and np.allclose(frame[f"proba_{c.classes_[1]}"], proba[:, 1])
    bundle.save_decision(run, {"temperature": -1, "threshold": 0.5})
    with pytest.raises(BundleError, match="decision.json"):
        cotune.load(run)


def test_fit_calibrates_and_thresholds_the_final_model(tmp_path):
    out = tmp_path / "s"
    res = cotune.fit("sklearn:breast_cancer", trials=2, metric="f1_macro", out=out, overrides=["train.epochs=4", "search.mlflow=none"])
    state = json.loads((out / "fit.json").read_text())
    assert state["metric"] == {"name": "f1_macro", "maximize": True}
    m = json.loads((out / "final" / "metrics.json").read_text())
    cal = m["calibration"]
    d = json.loads((out / "final" / "decision.json").read_text())
    assert d["temperature"] == cal["temperature"] and d["metric"] == "f1_macro" and d["threshold"] == cal["threshold"]
    assert set(cal["test_before"]) >= {"log_loss", "brier", "ece"} and set(cal["test_after"]) >= {"log_loss", "brier", "ece"}
    assert res.test == m["test"] and m["test"]["log_loss"] == pytest.approx(cal["test_after"]["log_loss"])
    # the saved model predicts what metrics.json scored
    ds = cotune.pipeline.load_data(from_dict({"data": {"source": "sklearn:breast_cancer"}}))
    from cotune.data.split import split_indices
    _, _, te = split_indices(ds, val=0.15, test=0.15, seed=0)
    proba = cotune.load(out / "final").predict_proba(ds.X.iloc[te])
    assert evaluate.score("log_loss", ds.y[te], proba, "binary") == pytest.approx(m["test"]["log_loss"], rel=1e-6)


def test_fit_regression_has_no_decision(tmp_path):
    cotune.fit("sklearn:diabetes", trials=1, metric="r2", out=tmp_path / "s", overrides=["train.epochs=2", "search.mlflow=none"])
    assert not (tmp_path / "s" / "final" / "decision.json").exists()
    assert json.loads((tmp_path / "s" / "fit.json").read_text())["metric"] == {"name": "r2", "maximize": True}


@pytest.mark.parametrize("data,metric,words", [("sklearn:breast_cancer", "bogus", "search.metric"),
                                               ("sklearn:diabetes", "roc_auc", "regression"),
                                               ("sklearn:wine", "f1", "multiclass")])
def test_bad_metric_is_one_line_exit_2_nothing_written(tmp_path, data, metric, words):
    out = tmp_path / "s"
    p = subprocess.run([sys.executable, "-m", "cotune.cli", "fit", data, "--metric", metric, "--trials", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, **ENV}, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0] and "Traceback" not in p.stderr
    assert not out.exists()


def test_coslog4_schedule_restarts_four_times_and_ends_near_zero():
    from cotune.train import get_lr
    lrs = [get_lr(s, 1000, 1.0, "coslog4", 0.0, 0.1, 1) for s in range(1000)]
    lows = [i for i in range(1, 999) if lrs[i] < lrs[i - 1] and lrs[i] <= lrs[i + 1]]
    assert len(lows) == 3 and lrs[0] == 0.0 and max(lrs) == pytest.approx(1.0, abs=1e-3) and lrs[-1] < 0.01
