"""Data audit: every registered check finds its planted defect and stays quiet on clean data;
images / sequences, caching, saving, bad input, and label-noise detection on sklearn digits."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from cotune.data import audit_models
from cotune.data.audit import CHECKS, Issues, audit, list_checks, severity
from cotune.data.dataset import Dataset, make_dataset
from cotune.data.sources import load
from cotune.data.split import split_indices
from cotune.errors import ConfigError

N = 600


@dataclass
class Case:
    ds: Dataset
    splits: tuple
    rows: np.ndarray | None = None    # rows the check must flag
    columns: tuple | None = None      # columns the check must list in summary['columns']
    min_recall: float = 1.0
    max_false: int = 0                # flags allowed beyond the planted ones
    severity: str | None = None       # expected summary['severity']


def base_table(seed: int = 0, n: int = N):
    """A clean classification table: 4 continuous columns, an integer column with a wide range, a
    3-level category; a balanced 3-class target from a linear function of the numeric columns."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 4))
    y = (Z @ np.array([[2.0, -1.0, 0.0], [0.0, 2.0, -1.5], [1.0, 0.5, 2.0], [-1.0, 1.0, 1.0]])).argmax(1)
    df = pd.DataFrame({"a": Z[:, 0] * 10 + 50, "b": Z[:, 1], "c": Z[:, 2] * 3 - 1, "d": Z[:, 3] * 0.1,
                       "income": rng.integers(20_000, 90_000, n),
                       "color": rng.choice(np.array(["red", "green", "blue"], dtype=object), n)})
    return df, y


def splits_for(df, y):
    return split_indices(make_dataset(df, y), val=0.15, test=0.15, seed=0)


def case(df, y, **kw) -> Case:
    return Case(make_dataset(df, y), **kw)


def copy_rows(df, y, src, dst, noise=0.0, relabel=False):
    df, y = df.copy(), y.copy()
    df.iloc[dst] = df.iloc[src].to_numpy()
    if noise:
        for c in ("a", "b", "c", "d"):
            df.loc[dst, c] = df.loc[dst, c].to_numpy() * (1 + noise)
    y[dst] = (y[src] + 1) % 3 if relabel else y[src]
    return df, y


def later(src, dst):
    return np.maximum(src, dst)


# ----------------------------------------------------------------------------------------------
# one builder per check: build(defect) -> Case


def f_missing_values(defect):
    df, y = base_table()
    sp = splits_for(df, y)
    if not defect:
        return case(df, y, splits=sp)
    df.loc[[3, 10, 50], "a"] = np.nan
    df.loc[7, "color"] = None
    df.loc[11, "b"] = np.inf
    return case(df, y, splits=sp, rows=np.array([3, 7, 10, 11, 50]), columns=("a", "b", "color"))


def f_constant_columns(defect):
    df, y = base_table()
    if defect:
        df["const"] = 1.0
        df["almost"] = np.where(np.arange(N) == 5, "y", "x")
    return case(df, y, splits=splits_for(df, y), columns=("const", "almost") if defect else None)


def f_id_like_columns(defect):
    df, y = base_table()
    if defect:
        rng = np.random.default_rng(1)
        df["row_id"] = rng.permutation(N) + 1000
        df["uuid"] = [f"u{v:06d}" for v in rng.permutation(N)]
    return case(df, y, splits=splits_for(df, y), columns=("row_id", "uuid") if defect else None)


def f_target_leak_features(defect):
    df, y = base_table()
    if defect:
        df["leak"] = y * 10 + np.random.default_rng(2).normal(0, 0.5, N)
        df["leak_cat"] = np.array([f"class{v}" for v in y], dtype=object)
    return case(df, y, splits=splits_for(df, y), columns=("leak", "leak_cat") if defect else None,
                severity="high" if defect else "none")


def _train_pairs(sp, k, seed=3):
    rng = np.random.default_rng(seed)
    pick = rng.choice(sp[0], 2 * k, replace=False)
    return pick[:k], pick[k:]


def f_duplicates(defect):
    df, y = base_table()
    sp = splits_for(df, y)
    if not defect:
        return case(df, y, splits=sp)
    src, dst = _train_pairs(sp, 20)
    df, y = copy_rows(df, y, src, dst)
    return case(df, y, splits=sp, rows=later(src, dst))


def f_near_duplicates(defect):
    df, y = base_table()
    sp = splits_for(df, y)
    if not defect:
        return case(df, y, splits=sp)
    src, dst = _train_pairs(sp, 15)
    df, y = copy_rows(df, y, src, dst, noise=1e-7)
    rest = sp[0][~np.isin(sp[0], np.r_[src, dst])]
    df, y = copy_rows(df, y, rest[:3], rest[3:6])  # exact copies are the 'duplicates' check's, not near ones
    return case(df, y, splits=sp, rows=later(src, dst))


def f_conflicting_duplicates(defect):
    df, y = base_table()
    sp = splits_for(df, y)
    if not defect:
        return case(df, y, splits=sp)
    src, dst = _train_pairs(sp, 10)
    df, y = copy_rows(df, y, src, dst, relabel=True)
    return case(df, y, splits=sp, rows=np.concatenate([src, dst]))


def f_leakage(defect):
    df, y = base_table()
    sp = splits_for(df, y)
    if not defect:
        return case(df, y, splits=sp)
    src, _ = _train_pairs(sp, 14)
    held = np.concatenate([sp[1][:7], sp[2][:7]])
    df, y = copy_rows(df, y, src[:10], held[:10])
    df, y = copy_rows(df, y, src[10:], held[10:], noise=1e-7)   # near copies leak too
    return case(df, y, splits=sp, rows=np.concatenate([src, held]))


def f_outliers(defect):
    df, y = base_table()
    sp = splits_for(df, y)
    if not defect:
        return case(df, y, splits=sp, max_false=3)
    rows = np.random.default_rng(4).choice(sp[0], 15, replace=False)
    df.loc[rows[:8], "a"] = 50 + 10 * 10.0       # 10 sigma
    df.loc[rows[8:], "c"] = -1 - 10 * 3.0
    return case(df, y, splits=sp, rows=rows, min_recall=0.8, max_false=3)


def f_class_imbalance(defect):
    df, y = base_table()
    if defect:
        rng = np.random.default_rng(5)
        y = np.where((y == 2) & (rng.random(N) < 0.9), 0, y)  # class 2 keeps ~10% of its rows
    return case(df, y, splits=splits_for(df, y), severity="high" if defect else "none")


def f_label_issues(defect):
    df, y = base_table(n=1000)
    sp = splits_for(df, y)
    if not defect:
        return case(df, y, splits=sp, max_false=int(0.02 * len(sp[0])))
    rng = np.random.default_rng(6)  # 10% of the labels of every part: the check examines every row
    flip = np.sort(rng.choice(len(y), int(0.1 * len(y)), replace=False))
    y = y.copy()
    y[flip] = (y[flip] + rng.integers(1, 3, len(flip))) % 3
    return case(df, y, splits=sp, rows=flip, min_recall=0.8, max_false=int(0.2 * len(flip)))



def text_base(seed: int = 0, n: int = N):
    """base_table plus a 'review' column of 20 random words (a 2000-word vocabulary): a text column."""
    df, y = base_table(seed, n)
    rng = np.random.default_rng(seed + 10)
    vocab = np.array([f"w{i}" for i in range(2000)], dtype=object)
    df["review"] = [" ".join(rng.choice(vocab, 20)) for _ in range(n)]
    return df, y


def f_text_empty(defect):
    df, y = text_base()
    sp = splits_for(df, y)
    if not defect:
        return case(df, y, splits=sp)
    rows = np.array([3, 10, 50, 200])
    df.loc[rows, "review"] = [None, "", "?!", "fine"]   # missing, empty, punctuation only, one word
    return case(df, y, splits=sp, rows=rows)


def f_text_duplicates(defect):
    df, y = text_base()
    sp = splits_for(df, y)
    if not defect:
        return case(df, y, splits=sp)
    src, dst = _train_pairs(sp, 10)
    t = df["review"].to_numpy().copy()
    t[dst[:5]] = [s.upper() + "!" for s in t[src[:5]]]                          # case / punctuation only
    t[dst[5:]] = [" ".join(s.split()[:10] + ["other"] + s.split()[11:]) for s in t[src[5:]]]  # one word changed
    df["review"] = t
    return case(df, y, splits=sp, rows=later(src, dst))


def f_text_overlap(defect):
    df, y = text_base()
    sp = splits_for(df, y)
    if not defect:
        return case(df, y, splits=sp)
    src, _ = _train_pairs(sp, 10)
    held = np.concatenate([sp[1][:5], sp[2][:5]])
    t = df["review"].to_numpy().copy()
    t[held] = [s.upper() for s in t[src]]
    df["review"] = t
    return case(df, y, splits=sp, rows=held)


FIXTURES = {name[2:]: fn for name, fn in dict(globals()).items() if name.startswith("f_") and callable(fn)}


def test_every_registered_check_has_a_fixture():
    missing = sorted(set(list_checks()) - set(FIXTURES))
    assert not missing, f"add a fixture builder f_<name> for the new check(s) {missing}"
    assert set(FIXTURES) <= set(list_checks())


def _run(c: Case, name: str) -> Issues:
    report = audit(c.ds, *c.splits, checks=[name], cache=False)
    assert list(report.issues) == [name]
    iss = report[name]
    n = len(c.ds)
    assert iss.mask.shape == (n,) and iss.mask.dtype == bool
    assert iss.score.shape == (n,) and iss.score.dtype == np.float32
    assert np.all((iss.score >= 0) & (iss.score <= 1))
    json.dumps(iss.summary, allow_nan=False)
    for key in ("count", "share", "severity", "fix", "message"):
        assert key in iss.summary
    assert iss.summary["severity"] in ("none", "low", "medium", "high")
    assert "\n" not in iss.summary["message"]
    return iss


@pytest.mark.parametrize("name", list_checks())
def test_check_finds_planted_defect(name):
    c = FIXTURES[name](True)
    iss = _run(c, name)
    if c.rows is not None:
        hit = iss.mask[c.rows].mean()
        assert hit >= c.min_recall, f"{name}: recall {hit:.2f}"
        false = int(iss.mask.sum() - iss.mask[c.rows].sum())
        assert false <= c.max_false, f"{name}: {false} rows flagged beyond the planted ones"
        assert iss.summary["count"] == int(iss.mask.sum()) and iss.summary["fix"]
    if c.columns is not None:
        found = set(iss.summary["columns"])
        assert set(c.columns) <= found and len(found - set(c.columns)) <= c.max_false, found
        if CHECKS[name].level == "columns":
            assert not iss.mask.any() and iss.summary["count"] == len(found)
    if c.severity is not None:
        assert iss.summary["severity"] == c.severity
    else:
        assert iss.summary["severity"] != "none"


@pytest.mark.parametrize("name", list_checks())
def test_check_quiet_on_clean_data(name):
    c = FIXTURES[name](False)
    iss = _run(c, name)
    assert int(iss.mask.sum()) <= c.max_false, f"{name}: {int(iss.mask.sum())} flags on clean data"
    if "columns" in iss.summary:
        assert len(iss.summary["columns"]) == 0, iss.summary["columns"]
    if c.max_false == 0:
        assert iss.summary["severity"] == "none"


# ----------------------------------------------------------------------------------------------


def test_duplicates_keep_first_and_leakage_rows():
    c = FIXTURES["duplicates"](True)
    iss = audit(c.ds, *c.splits, checks=["duplicates"], cache=False)["duplicates"]
    first = iss.extra["first"]
    assert np.all(first[iss.mask] < np.flatnonzero(iss.mask)) and np.all(first[~iss.mask] == -1)
    c = FIXTURES["leakage"](True)
    leak = audit(c.ds, *c.splits, checks=["leakage"], cache=False)["leakage"]
    assert set(leak.extra["train_rows"]) == set(c.rows[:14])
    assert leak.summary["val"] == 7 and leak.summary["test"] == 7 and leak.summary["exact"] == 10
    assert leak.summary["fix"] == "data.clean.leakage=drop"


def test_default_runs_every_applicable_check_and_table():
    c = FIXTURES["duplicates"](True)
    report = audit(c.ds, *c.splits, cache=False)
    assert list(report.issues) == list_checks(c.ds) == list_checks()
    table = report.table()
    assert len(table) == len(c.ds) and list(table.columns[:2]) == ["row", "part"]
    assert set(table["part"]) == {"train", "val", "test"}
    assert "duplicates" in table and "duplicates_score" in table and "constant_columns" not in table
    sev = [s["severity"] for s in report.summary()["checks"].values()]
    order = ["high", "medium", "low", "none"]
    assert sev == sorted(sev, key=order.index)
    out = io.StringIO()
    from rich.console import Console
    report.print(Console(file=out, width=150))
    assert "duplicates" in out.getvalue() and "data.clean.duplicates=drop" in out.getvalue()


def test_regression_table():
    df, _ = base_table()
    y = df["a"].to_numpy() * 0.3 + np.random.default_rng(0).normal(0, 1, N)
    df["a_leak"] = y * 2 + 1
    ds = make_dataset(df, y, task="regression")
    report = audit(ds, *split_indices(ds, seed=0), cache=False)
    assert "label_issues" not in report.issues and "class_imbalance" not in report.issues
    assert report["target_leak_features"].summary["columns"] == ["a_leak"]


def test_image_dataset_runs_applicable_checks():
    ds = load("sklearn:digits")
    sp = split_indices(ds, seed=0)
    report = audit(ds, *sp, cache=False, proxy="linear")  # the image proxy network: test_label_audit.py
    assert set(report.issues) == set(list_checks(ds))
    assert "missing_values" not in report.issues and "label_issues" in report.issues
    assert report["duplicates"].summary["count"] == 0 and report["leakage"].summary["count"] == 0
    assert report["label_issues"].extra["pred_probs"].shape == (len(ds), 10)
    assert report["label_issues"].summary["proxy_accuracy"] > 0.9
    with pytest.raises(ConfigError) as e:
        audit(ds, *sp, checks=["missing_values"])
    assert "\n" not in str(e.value) and "tabular" in str(e.value)


def test_sequence_dataset_with_duplicates():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 2, 100)).astype(np.float32)
    y = rng.integers(0, 2, 300)
    ds0 = make_dataset(X, y)
    tr, va, te = split_indices(ds0, seed=0)
    X[tr[:5]] = X[tr[5:10]]
    X[va[:3]] = X[tr[20:23]] + 1e-6
    ds = make_dataset(X, y)
    assert ds.modality == "sequence"
    report = audit(ds, tr, va, te, cache=False)
    assert set(report.issues) == set(list_checks(ds))
    assert set(np.flatnonzero(report["duplicates"].mask)) == set(np.maximum(tr[:5], tr[5:10]))
    assert set(report["leakage"].extra["heldout_rows"]) == set(va[:3])


def test_cache_skips_the_expensive_fits(tmp_path, monkeypatch):
    monkeypatch.setenv("COTUNE_CACHE_DIR", str(tmp_path))
    c = FIXTURES["label_issues"](True)
    first = audit(c.ds, *c.splits, checks=["label_issues", "outliers"])
    assert first.computed == ["labels-gbdt", "labels-linear", "outlier"]  # proxy 'auto' on a table: both candidates
    assert len(list((tmp_path / "audit").glob("*.npz"))) == 3

    def boom(*a, **k):
        raise AssertionError("recomputed despite the cache")
    monkeypatch.setattr(audit_models, "_fit_proxy", boom)
    monkeypatch.setattr(audit_models, "outlier_scores", boom)
    second = audit(c.ds, *c.splits, checks=["label_issues", "outliers"])
    assert second.computed == []
    for name in ("label_issues", "outliers"):
        assert np.array_equal(first[name].mask, second[name].mask)
        assert np.allclose(first[name].score, second[name].score)
    with pytest.raises(AssertionError, match="recomputed"):
        audit(c.ds, *c.splits, checks=["label_issues"], cache=False)
    other = (np.sort(c.splits[0][10:]), c.splits[1], np.sort(np.r_[c.splits[2], c.splits[0][:10]]))
    with pytest.raises(AssertionError, match="recomputed"):  # other test rows: another cache key
        audit(c.ds, *other, checks=["label_issues"])
    moved = (np.sort(np.r_[c.splits[0], c.splits[1][:10]]), c.splits[1][10:], c.splits[2])
    assert audit(c.ds, *moved, checks=["label_issues"]).computed == []  # the same non-test rows: the same folds


def test_save_writes_parseable_files(tmp_path):
    c = FIXTURES["missing_values"](True)
    report = audit(c.ds, *c.splits, cache=False)
    report.save(tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert summary["rows"] == {"train": len(c.splits[0]), "val": len(c.splits[1]), "test": len(c.splits[2])}
    assert summary["checks"]["missing_values"]["columns"] == {"a": 3, "b": 1, "color": 1}
    assert summary["checks"]["class_imbalance"]["fix"] in ("", "data.balance=class_weights")
    table = pd.read_csv(tmp_path / "run" / "audit.csv")
    assert len(table) == N and table["missing_values"].sum() == 5
    assert not list(tmp_path.joinpath("run").glob(".*tmp"))


def test_bad_input():
    df, _ = base_table()
    ds = make_dataset(df, df["a"].to_numpy() * 1.5, task="regression")
    sp = split_indices(ds, seed=0)
    with pytest.raises(ConfigError) as e:
        audit(ds, *sp, checks=["label_issues"])
    msg = str(e.value)
    assert "\n" not in msg and "label_issues" in msg and "classification target" in msg
    with pytest.raises(ConfigError) as e:
        audit(ds, *sp, checks=["duplicates", "dupes"])
    msg = str(e.value)
    assert "\n" not in msg and "'dupes'" in msg and "'near_duplicates'" in msg
    with pytest.raises(ConfigError):
        audit(ds, *sp, cv_folds=1)


def test_severity_rule_and_registry():
    assert [severity(s) for s in (0.0, 0.001, 0.01, 0.049, 0.05, 0.5)] == ["none", "low", "medium", "medium", "high", "high"]
    assert CHECKS["label_issues"].expensive and not CHECKS["duplicates"].expensive
    assert list_checks(expensive=False) == [n for n in list_checks() if n not in ("outliers", "label_issues")]


def test_digits_label_noise_detection():
    """20% uniform label noise in the training part of sklearn digits (flattened to a table)."""
    ds0 = load("sklearn:digits")
    X = ds0.X.reshape(len(ds0), -1)
    tr, va, te = split_indices(make_dataset(X, ds0.y), seed=0)
    rng = np.random.default_rng(0)
    y = ds0.y.copy()
    flip = np.zeros(len(y), dtype=bool)
    flip[tr[rng.random(len(tr)) < 0.2]] = True
    y[flip] = (y[flip] + rng.integers(1, 10, flip.sum())) % 10
    report = audit(make_dataset(X, y), tr, va, te, checks=["label_issues"], cache=False)
    m = report["label_issues"].mask
    precision, recall = (m & flip).sum() / m.sum(), (m & flip).sum() / flip.sum()
    assert precision >= 0.8 and recall >= 0.7, (precision, recall)
    suggested = report["label_issues"].extra["suggested"]
    assert np.all(suggested >= 0) and np.mean(suggested[flip] == ds0.y[flip]) > 0.8  # every part is checked
    assert report["label_issues"].summary["trust"] == "high"  # the proxy predicts nearly every unflagged label
    assert not m[va].any() or m[va].mean() < 0.1  # clean validation labels: few flags
