"""Baselines: a linear model and LightGBM fitted on the rows the network trains on, scored with its metrics,
written to fit.json by `cotune fit`."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest

from cotune import baselines
from cotune.baselines import fit_baselines, fit_baselines_safe, match_cleaning
from cotune.config import from_dict
from cotune.pipeline import load_data, prepare

CLASSIFICATION_KEYS = {"n", "accuracy", "balanced_accuracy", "f1_macro", "log_loss", "roc_auc", "ece"}
REGRESSION_KEYS = {"n", "rmse", "mae", "r2"}
DROPPED = {"per_class", "confusion_matrix", "calibration", "residual_quantiles"}


def config(source: str, **dotted):
    return from_dict({"data": {"source": source}}).replace(**dotted) if dotted else from_dict({"data": {"source": source}})


@pytest.fixture
def lgbm_params(monkeypatch):
    """The parameters of every LightGBM model fitted while the test runs."""
    import lightgbm
    seen = []
    for cls in (lightgbm.LGBMClassifier, lightgbm.LGBMRegressor):
        def fit(self, *a, _orig=cls.fit, **k):
            out = _orig(self, *a, **k)
            seen.append(self.get_params())
            return out
        monkeypatch.setattr(cls, "fit", fit)
    return seen


@pytest.mark.parametrize("source,task,linear,lgbm", [
    ("sklearn:breast_cancer", "binary", "LogisticRegression", "LGBMClassifier"),
    ("sklearn:wine", "multiclass", "LogisticRegression", "LGBMClassifier"),
    ("sklearn:diabetes", "regression", "Ridge", "LGBMRegressor"),
])
def test_both_baselines_are_scored_on_the_networks_rows(source, task, linear, lgbm, lgbm_params):
    cfg = config(source)
    ds = load_data(cfg)
    assert ds.task == task and ds.modality == "tabular"
    r = fit_baselines(cfg, ds, threads=2)
    json.dumps(r, allow_nan=False)  # plain JSON, as fit.json needs
    assert set(r) == {"rows", "cleaning", "test_trained_on", "seconds", "models"}
    ts, merged = prepare(cfg, ds), prepare(cfg, ds, merge_val=True)
    assert r["rows"] == {"train": len(ts.train_idx), "val": len(ts.val), "test": len(ts.test),
                         "train_val": len(merged.train_idx)}
    assert r["rows"]["train"] == ts.summary["rows"]["train_clean"] and r["rows"]["train_val"] == len(ts.train_idx) + len(ts.val)
    assert r["cleaning"] == cfg.data.clean.model_dump() and r["test_trained_on"] == "train+val"
    assert set(r["models"]) == {"linear", "lightgbm"}
    assert r["models"]["linear"]["name"] == linear and r["models"]["lightgbm"]["name"] == lgbm
    for key, m in r["models"].items():
        assert m["seconds"] >= 0
        for part in ("val", "test"):
            s = m[part]
            assert s["n"] == r["rows"][part]
            assert (REGRESSION_KEYS if task == "regression" else CLASSIFICATION_KEYS) <= set(s), (key, part)
            assert not DROPPED & set(s)
            assert all(v is None or isinstance(v, (int, float)) for v in s.values())
            if task == "regression":
                assert 0 < s["rmse"] < 200 and s["mae"] <= s["rmse"] and s["r2"] > 0.2  # target units: diabetes ~ 25..346
            else:
                assert 0.8 < s["accuracy"] <= 1 and 0.8 < s["roc_auc"] <= 1 and 0 <= s["ece"] <= 1 and s["log_loss"] >= 0
    # two fits per model kind (train -> val, train+val -> test), each with the threads asked for
    assert len(lgbm_params) == 2 and all(p["n_jobs"] == 2 and p["random_state"] == cfg.runtime.seed and p["verbose"] == -1
                                         for p in lgbm_params)


def test_the_linear_baseline_reuses_the_networks_encoding_and_refits_for_test(monkeypatch):
    cfg = config("sklearn:wine")
    ds = load_data(cfg)
    fitted = []
    from sklearn.linear_model import LogisticRegression
    orig = LogisticRegression.fit
    monkeypatch.setattr(LogisticRegression, "fit", lambda self, X, y: fitted.append((X.copy(), y.copy())) or orig(self, X, y))
    fit_baselines(cfg, ds)
    ts, merged = prepare(cfg, ds), prepare(cfg, ds, merge_val=True)
    (X1, y1), (X2, y2) = fitted
    np.testing.assert_array_equal(X1, ts.X[ts.train_idx])      # Preprocessor fitted on the training rows
    np.testing.assert_array_equal(y1, ds.y[ts.train_idx])
    np.testing.assert_array_equal(X2, merged.X[merged.train_idx])  # refitted on train + validation for test
    assert len(y2) == len(ts.train_idx) + len(ts.val)


@pytest.fixture
def duplicated_csv(tmp_path):
    """wine with 40 of its rows repeated: exact duplicates for data.clean.duplicates=drop to remove."""
    from sklearn.datasets import load_wine
    df = load_wine(as_frame=True).frame
    df = pd.concat([df, df.iloc[:40]], ignore_index=True)
    path = tmp_path / "wine_dup.csv"
    df.to_csv(path, index=False)
    return str(path)


def test_a_cleaning_knob_changes_the_rows_the_baselines_use(duplicated_csv):
    keep = config(duplicated_csv, **{"data.target": "target"})
    drop = keep.replace(**{"data.clean.duplicates": "drop"})
    ds = load_data(keep)
    a, b = fit_baselines(keep, ds), fit_baselines(drop, ds)
    assert b["cleaning"]["duplicates"] == "drop" and a["cleaning"]["duplicates"] == "keep"
    assert b["rows"]["train"] < a["rows"]["train"] and b["rows"]["train"] == len(prepare(drop, ds).train_idx)
    assert (a["rows"]["val"], a["rows"]["test"]) == (b["rows"]["val"], b["rows"]["test"])  # only training rows go
    assert b["models"]["linear"]["val"]["accuracy"] > 0.8 and b["models"]["lightgbm"]["test"]["accuracy"] > 0.8


def test_categorical_columns_reach_lightgbm_as_categories(tmp_path, lgbm_params, monkeypatch):
    rng = np.random.default_rng(0)
    n = 300
    colour = rng.choice(["red", "green", "blue"], n)
    size = rng.normal(size=n)
    y = np.where((colour == "red") ^ (size > 0.5), "yes", "no")
    path = tmp_path / "t.csv"
    pd.DataFrame({"colour": colour, "size": size, "label [a]": y}).to_csv(path, index=False)
    cfg = config(str(path), **{"data.target": "label [a]"})
    ds = load_data(cfg)
    assert "colour" in ds.categorical
    frames = []
    import lightgbm
    orig = lightgbm.LGBMClassifier.predict_proba
    monkeypatch.setattr(lightgbm.LGBMClassifier, "predict_proba", lambda self, X, **k: frames.append(X) or orig(self, X, **k))
    r = fit_baselines(cfg, ds)
    assert r["models"]["lightgbm"]["test"]["accuracy"] > 0.9, r["models"]["lightgbm"]
    assert all(str(f.dtypes.iloc[1]) == "category" and list(f.iloc[:, 1].cat.categories) == ["blue", "green", "red"]
               for f in frames)


def test_images_and_sequences_get_no_baselines(tmp_path, monkeypatch):
    monkeypatch.setenv("COTUNE_CACHE_DIR", str(tmp_path))
    digits = config("sklearn:digits")
    assert load_data(digits).modality == "image"  # 8x8 images in cotune, not a table
    assert fit_baselines(digits, load_data(digits)) == {}
    seq = config("mnist1d", **{"data.n_samples": 100})
    assert load_data(seq).modality == "sequence"
    assert fit_baselines(seq, load_data(seq)) == {}


def test_a_failing_model_is_recorded_and_the_other_still_scored(monkeypatch):
    import lightgbm

    def boom(self, *a, **k):
        raise RuntimeError("no trees today\nsecond line")
    monkeypatch.setattr(lightgbm.LGBMClassifier, "fit", boom)
    cfg = config("sklearn:breast_cancer")
    r = fit_baselines(cfg, load_data(cfg))
    assert r["models"]["lightgbm"] == {"error": "RuntimeError: no trees today second line"}
    assert 0.8 < r["models"]["linear"]["test"]["accuracy"] <= 1


def test_an_unexpected_failure_becomes_an_error_record(monkeypatch):
    def broken(*a, **k):
        raise ValueError("the split broke")
    monkeypatch.setattr(baselines, "prepare", broken)
    cfg = config("sklearn:wine")
    assert fit_baselines_safe(cfg, load_data(cfg)) == {"error": "ValueError: the split broke"}


def test_the_baselines_follow_the_final_models_cleaning_when_time_allows(duplicated_csv):
    base = config(duplicated_csv, **{"data.target": "target"})
    final = base.replace(**{"data.clean.duplicates": "drop"})
    ds = load_data(base)
    first = fit_baselines(base, ds)
    assert match_cleaning(first, base, base, ds, None) is first  # same cleaning: nothing to do
    late = match_cleaning(first, base, final, ds, deadline=time.time() - 1)
    assert {k: v for k, v in late.items() if k != "cleaning_note"} == first
    assert "data.clean.duplicates='drop'" in late["cleaning_note"] and "budget" in late["cleaning_note"]
    again = match_cleaning(first, base, final, ds, deadline=time.time() + 3600)
    assert again["cleaning"]["duplicates"] == "drop" and "cleaning_note" not in again
    assert again["rows"]["train"] == len(prepare(final, ds).train_idx) < first["rows"]["train"]
    assert match_cleaning({}, base, final, ds, None) == {}  # images: still none


def test_cotune_fit_writes_the_baselines_to_fit_json(tmp_path):
    """A real search whose trials all drop duplicates (base config: keep): the baselines are refitted with the final
    model's cleaning, so they saw the rows the network saw."""
    from typer.testing import CliRunner

    from cotune.cli import app
    out = tmp_path / "search"
    space = json.dumps({"data.clean.duplicates": ["drop"]})
    r = CliRunner().invoke(app, ["fit", "sklearn:iris", "--trials", "2", "--workers", "1", "--set", "search.mlflow=none",
                                 "--set", "search.top_k=1", "--set", "train.epochs=2", "--set", "model.width=8",
                                 "--set", f"search.space={space}", "-q", "--out", str(out)],
                           env={"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert r.exit_code == 0, r.stdout
    fit = json.loads((out / "fit.json").read_text())
    b = fit["baselines"]
    assert fit["best"]["params"]["data.clean.duplicates"] == "drop" and b["cleaning"]["duplicates"] == "drop"
    assert "cleaning_note" not in b
    final = json.loads((out / "final" / "metrics.json").read_text())
    trial = json.loads((out / "trials" / f"{fit['best']['number']:05d}" / "metrics.json").read_text())
    assert b["rows"]["train_val"] == final["data"]["rows"]["train_clean"]   # the final model's rows
    assert b["rows"]["train"] == trial["data"]["rows"]["train_clean"]       # the best trial's rows
    assert b["rows"]["test"] == final["test"]["n"] == b["models"]["lightgbm"]["test"]["n"]
    for m in b["models"].values():
        assert 0.5 < m["test"]["accuracy"] <= 1 and not math.isnan(m["val"]["log_loss"])
