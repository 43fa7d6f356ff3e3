"""Tabular preprocessing choices (numeric scaling, embedded categoricals, the column layout) and the
regression target's transform: all fitted on the training rows only, all saved as plain JSON."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import cotune
from cotune import evaluate
from cotune.config import from_dict
from cotune.data.dataset import make_dataset
from cotune.data.preprocess import NUMERIC_METHODS, Preprocessor, TargetTransform
from cotune.data.split import split_indices
from cotune.errors import BundleError
from cotune.pipeline import load_data, model_inputs, prepare

N, TRAIN = 300, np.arange(200)
CATS = [f"c{i:02d}" for i in range(20)]


@pytest.fixture
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({
        "skewed": rng.lognormal(0.0, 1.0, N),
        "normal": rng.normal(10.0, 3.0, N),
        "const": np.full(N, 7.0),
        "k": rng.choice(CATS, N),
        "s": rng.choice(["x", "y", "z"], N),
    })
    df.loc[[1, 5, 250], "skewed"] = np.nan
    df.loc[[2, 260], "normal"] = np.inf
    df.loc[3, "normal"] = -np.inf
    return df


def dataset(df: pd.DataFrame):
    return make_dataset(df, np.arange(len(df)) % 2)


def dumped(pre: Preprocessor) -> dict:
    return json.loads(json.dumps(pre.to_dict(), allow_nan=False))


# ---------------------------------------------------------------------------------------------- numeric scaling

@pytest.mark.parametrize("method", NUMERIC_METHODS)
def test_numeric_method_is_fitted_on_train_rows_only(table, method):
    pre = Preprocessor(numeric=method).fit(dataset(table), TRAIN)
    changed = table.copy()
    changed.loc[200:, "skewed"] = 1e9       # val / test rows only
    changed.loc[200:, "normal"] = -1e6
    changed.loc[290:, "k"] = "unseen"
    assert dumped(Preprocessor(numeric=method).fit(dataset(changed), TRAIN)) == dumped(pre)
    out = pre.transform(changed)
    assert out.shape == (N, pre.in_shape_[0]) == (N, 3 + 20 + 3) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert np.all(out[:, 2] == 0)  # a constant column
    if method == "robust":
        assert np.all(np.abs(out[:, :3]) <= 3) and np.all(np.abs(out[TRAIN, :3]) < 3)
        assert out[1, 0] == 0 and out[2, 1] == 0  # missing / infinite -> the median -> 0
    if method == "quantile":
        assert np.all(np.abs(out[:, :3]) < 5.2)


def test_robust_is_median_iqr_then_smooth_clip(table):
    pre = Preprocessor(numeric="robust").fit(dataset(table), TRAIN)
    v = table["normal"].iloc[TRAIN].to_numpy()
    med = np.median(v[np.isfinite(v)])
    v = np.where(np.isfinite(v), v, med)
    q25, q75 = np.quantile(v, [0.25, 0.75])
    x = (v - med) / (q75 - q25)
    np.testing.assert_allclose(pre.transform(table.iloc[TRAIN])[:, 1], x / np.sqrt(1 + (x / 3) ** 2), rtol=1e-6, atol=1e-6)
    # IQR 0: 2 / (max - min) instead
    df = pd.DataFrame({"v": [0.0] * 8 + [1.0, -3.0]})
    out = Preprocessor(numeric="robust").fit(dataset(df), np.arange(10)).transform(df)[:, 0]
    x = np.array([0.0] * 8 + [0.5, -1.5])
    np.testing.assert_allclose(out, x / np.sqrt(1 + (x / 3) ** 2), rtol=1e-6)


def test_quantile_maps_a_skewed_column_to_a_normal_like_sklearn():
    from sklearn.preprocessing import QuantileTransformer
    rng = np.random.default_rng(1)
    v = rng.lognormal(0.0, 1.5, 3000)
    df = pd.DataFrame({"v": v})
    pre = Preprocessor(numeric="quantile").fit(dataset(df), np.arange(3000))
    z = pre.transform(df)[:, 0].astype(np.float64)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.05 and abs(((z - z.mean()) ** 3).mean()) < 0.1
    ref = QuantileTransformer(n_quantiles=100, output_distribution="normal").fit(v[:, None])  # 3000 // 30
    np.testing.assert_allclose(z, ref.transform(v[:, None])[:, 0], atol=1e-5)
    new = rng.lognormal(0.0, 1.5, 50)
    np.testing.assert_allclose(pre.transform(pd.DataFrame({"v": new}))[:, 0], ref.transform(new[:, None])[:, 0], atol=1e-5)


@pytest.mark.parametrize("method", NUMERIC_METHODS)
def test_round_trip_gives_identical_transforms(tmp_path, table, method):
    pre = Preprocessor(numeric=method, embed=True).fit(dataset(table), TRAIN)
    d = pre.to_dict()
    assert d["version"] == (1 if method == "standard" and not any(c["embed"] for c in d["categorical"]) else 2)
    back = Preprocessor.from_dict(dumped(pre))
    np.testing.assert_array_equal(back.transform(table), pre.transform(table))
    assert back.layout_ == pre.layout_ and back.feature_names_ == pre.feature_names_ and back.numeric == method
    pre.save(tmp_path)
    np.testing.assert_array_equal(Preprocessor.load(tmp_path).transform(table), pre.transform(table))
    with pytest.raises(BundleError):
        Preprocessor.from_dict({**dumped(pre), "version": 4})
    bad = dumped(pre)
    bad["layout"]["cardinalities"] = [5]
    with pytest.raises(BundleError):
        Preprocessor.from_dict(bad)


# a preprocess.json as written before the scaling choices and the layout existed
OLD_STATE = {
    "format": "cotune.preprocess", "version": 1, "modality": "tabular", "max_categories": 50, "in_shape": [4],
    "feature_names": ["a", "b", "city=oslo", "city=paris"], "columns": ["a", "city", "b"],
    "numeric": [{"name": "a", "median": 2.0, "mean": 2.5, "std": 0.5}, {"name": "b", "median": -1.0, "mean": 0.0, "std": 4.0}],
    "categorical": [{"name": "city", "categories": ["oslo", "paris"], "other": False}],
}


def test_a_state_saved_before_the_choices_loads_and_transforms_as_before():
    pre = Preprocessor.from_dict(json.loads(json.dumps(OLD_STATE)))
    assert pre.numeric == "standard" and pre.layout_ is None and pre.in_shape_ == (4,)
    X = pd.DataFrame({"a": [3.0, np.nan, 1.0], "city": ["paris", "rome", None], "b": [8.0, -2.0, np.inf]})
    expected = np.array([[1.0, 2.0, 0.0, 1.0], [-1.0, -0.5, 0.0, 0.0], [-3.0, -0.25, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(pre.transform(X), expected)
    d = pre.to_dict()  # written back: still version 1, with the old keys unchanged
    assert d["version"] == 1 and {k: d[k] for k in OLD_STATE if k != "categorical"} == \
        {k: v for k, v in OLD_STATE.items() if k != "categorical"}


# ---------------------------------------------------------------------------------------------- categoricals

def test_many_categories_become_one_code_column_when_embedded(table):
    ds = dataset(table)
    pre = Preprocessor(embed=True, embed_above=8).fit(ds, TRAIN)
    assert pre.layout_["onehot"] == 3 and pre.layout_["cardinalities"] == [21]  # 20 kept + the unseen slot
    assert pre.in_shape_ == (3 + 3 + 1,) and pre.feature_names_ == ["skewed", "normal", "const", "s=x", "s=y", "s=z", "k"]
    kept = pre.categories_["k"]
    assert kept == CATS
    new = table.iloc[:4].copy()
    new["k"] = ["c03", "c19", "brand-new", None]
    out = pre.transform(new)
    assert out[:, -1].tolist() == [3.0, 19.0, 20.0, 20.0]  # unseen / missing -> the last code
    np.testing.assert_array_equal(out[:, 3:6], pre.transform(table.iloc[:4])[:, 3:6])
    codes = pre.transform(table)[:, -1]
    assert set(np.unique(codes)) <= set(range(21)) and np.array_equal(codes, [CATS.index(v) for v in table["k"]])
    # at most embed_above kept categories stay one-hot; embed=False: everything one-hot, as before
    assert Preprocessor(embed=True, embed_above=20).fit(ds, TRAIN).layout_["cardinalities"] == []
    plain = Preprocessor(embed=False, embed_above=8).fit(ds, TRAIN)
    assert plain.in_shape_ == (3 + 20 + 3,) and plain.layout_["cardinalities"] == [] and plain.layout_["onehot"] == 23
    np.testing.assert_array_equal(plain.transform(table), Preprocessor().fit(ds, TRAIN).transform(table))


def test_embedded_column_over_the_category_cap_shares_the_other_slot():
    cats = [f"c{i:02d}" for i in range(60)]
    df = pd.DataFrame({"k": cats * 2 + ["c00"] * 10, "v": np.arange(130, dtype=float)})
    pre = Preprocessor(max_categories=50, embed=True).fit(dataset(df), np.arange(130))
    assert pre.categories_["k"][-1] == "__other__" and pre.layout_["cardinalities"] == [51]
    out = pre.transform(pd.DataFrame({"k": ["c00", "brand-new", "c59"], "v": [1.0, 2.0, 3.0]}))
    assert "c59" not in pre.categories_["k"]  # the 50 kept: c00 (the most frequent), then c01..c49 by name
    assert out[:, -1].tolist() == [0.0, 50.0, 50.0]  # outside the kept categories: the '__other__' code


# ---------------------------------------------------------------------------------------------- layout

@pytest.mark.parametrize("method", NUMERIC_METHODS)
def test_layout_adds_up_and_holds_bins_per_numeric_column(table, method):
    pre = Preprocessor(numeric=method, embed=True).fit(dataset(table), TRAIN)
    lay = pre.layout_
    assert set(lay) == {"numeric", "onehot", "cardinalities", "bins", "text"} and lay["text"] == []
    assert lay["numeric"] + lay["onehot"] + len(lay["cardinalities"]) == pre.in_shape_[0] == len(pre.feature_names_)
    assert len(lay["bins"]) == lay["numeric"] == 3
    t = pre.transform(table.iloc[TRAIN])
    for j, edges in enumerate(lay["bins"]):
        assert len(edges) >= 2 and edges == sorted(set(edges)) and all(type(e) is float for e in edges)
        assert all(float(np.float32(e)) == e for e in edges)  # float32 precision
        if j < 2:  # n_bins = min(48, max(2, 200 // 50)) = 4
            q = np.unique(np.quantile(t[:, j].astype(np.float64), np.linspace(0, 1, 5)).astype(np.float32))
            assert edges == [float(e) for e in q]
    assert lay["bins"][2] == [0.0, 1.0]  # a constant column: [min, min + 1]
    assert json.loads(json.dumps(lay)) == lay
    arrays = Preprocessor().fit(make_dataset(np.zeros((10, 2, 5), np.float32), np.arange(10) % 2), np.arange(8))
    assert arrays.layout_ is None


def test_bins_follow_the_training_rows():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"v": rng.normal(size=5000)})
    lay = Preprocessor().fit(dataset(df), np.arange(5000)).layout_
    assert len(lay["bins"][0]) == 49  # n_bins = min(48, 5000 // 50)


# ---------------------------------------------------------------------------------------------- targets

def skewed_target():
    return np.random.default_rng(0).lognormal(3.0, 1.0, 400)


def signed_target():
    return np.random.default_rng(1).normal(-20.0, 50.0, 400)


@pytest.mark.parametrize("kind, y", [("standard", skewed_target()), ("log", skewed_target()), ("quantile", skewed_target()),
                                     ("standard", signed_target()), ("quantile", signed_target()),
                                     ("log", signed_target())])
def test_target_transform_round_trips(kind, y):
    t = TargetTransform(kind).fit(y)
    z = t.transform(y)
    assert z.dtype == np.float32 and z.shape == y.shape and np.isfinite(z).all()
    assert abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-4
    back = t.inverse(z)
    assert back.dtype == np.float64 and back.shape == y.shape
    np.testing.assert_allclose(back, y, rtol=1e-4, atol=1e-4 * y.std())
    np.testing.assert_array_equal(t.inverse(z[:, None]), back)  # (N, 1) outputs too
    again = TargetTransform.from_dict(json.loads(json.dumps(t.to_dict(), allow_nan=False)))
    np.testing.assert_array_equal(again.transform(y), z)
    np.testing.assert_array_equal(again.inverse(z), back)
    far = t.inverse(np.array([-1e6, 1e6]))
    assert np.isfinite(far).all()
    if kind == "quantile":
        assert far.tolist() == [y.min(), y.max()]  # inside the training range


def test_target_transform_details():
    y = signed_target()
    t = TargetTransform("log").fit(y)
    assert t.shift == y.min() < 0
    assert np.isfinite(t.transform(np.array([y.min() - 100, 1e12]))).all()  # below the shift, far above the range
    s = TargetTransform("standard").fit(y)
    assert (s.mean, s.std) == (pytest.approx(y.mean()), pytest.approx(y.std()))
    np.testing.assert_allclose(s.transform(y), (y - y.mean()) / y.std(), rtol=1e-5, atol=1e-6)
    assert TargetTransform("standard").fit(np.full(5, 3.0)).std == 1.0
    assert TargetTransform("log").fit(np.array([1.0, 10.0, 100.0])).shift == 0.0
    with pytest.raises(ValueError):
        TargetTransform("sqrt")
    with pytest.raises(ValueError):
        s.inverse(np.zeros((3, 2)))


# ---------------------------------------------------------------------------------------------- the pipeline

FAST = {"model": {"family": "mlp", "width": 16, "depth": 1}, "train": {"epochs": 3, "patience": 0},
        "runtime": {"progress": False}}


@pytest.mark.parametrize("target, numeric", [("log", "robust"), ("quantile", "quantile")])
def test_run_predicts_in_target_units_through_the_target_transform(tmp_path, target, numeric):
    cfg = from_dict({**FAST, "data": {"source": "sklearn:diabetes", "target_transform": target, "numeric": numeric},
                     "out": str(tmp_path / target)})
    res = cotune.pipeline.run(cfg)
    test = res.metrics["test"]
    assert all(np.isfinite(v) for v in test.values() if isinstance(v, float)) and 20 < test["rmse"] < 200
    spec = json.loads((res.path / "model.json").read_text())
    assert spec["target_transform"]["kind"] == target
    assert json.loads((res.path / "preprocess.json").read_text())["numeric_method"] == numeric
    ds = load_data(cfg)
    _, va, te = split_indices(ds, val=cfg.data.split.val, test=cfg.data.split.test, seed=cfg.data.split.seed)
    pred = cotune.load(res.path).predict(ds.X.iloc[te])
    assert pred.shape == (len(te),) and np.isfinite(pred).all()
    if target == "quantile":  # inside the training targets' range (diabetes: 25..346)
        assert 25 <= pred.min() and pred.max() <= 346
    again = evaluate.evaluate(ds.y[te], pred, ds.task, classes=[])
    assert set(again) == set(test)
    for k, v in test.items():
        assert again[k] == pytest.approx(v), k


def test_prepare_and_model_inputs_take_the_preprocessing_knobs(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"v": rng.normal(size=200), "k": rng.choice(CATS, 200), "y": rng.normal(size=200)})
    df.to_csv(tmp_path / "t.csv", index=False)
    cfg = from_dict({**FAST, "data": {"source": str(tmp_path / "t.csv"), "target": "y", "numeric": "robust",
                                      "target_transform": "quantile"}})
    ds = load_data(cfg)
    onehot = cfg.replace(**{"model.family": "transformer"})  # a family that reads no layout: everything one-hot
    data = prepare(onehot, ds)
    assert data.pre.numeric == "robust" and data.pre.layout_["cardinalities"] == []
    assert data.target.kind == "quantile" and (data.y_mean, data.y_std) == (data.target.mean, data.target.std)
    np.testing.assert_array_equal(data.y, data.target.transform(ds.y))
    assert model_inputs(onehot)[0] == data.pre.in_shape_ == (1 + 20,)
    data = prepare(cfg, ds)  # the mlp reads the layout: the 20-category column is one code column
    assert data.pre.layout_["cardinalities"] == [21] and model_inputs(cfg)[0] == data.pre.in_shape_ == (2,)
    assert model_inputs(cfg.replace(**{"data.embed_above": 50}))[0] == (21,)
    classes = from_dict({**FAST, "data": {"source": "sklearn:iris", "target_transform": "log"}})
    data = prepare(classes, load_data(classes))
    assert data.target is None and (data.y_mean, data.y_std) == (0.0, 1.0)
