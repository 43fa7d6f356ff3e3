"""Cleaning from a (fake) audit report and class balancing: index arrays in, index arrays out."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cotune.data.balance import METHODS, balance_train
from cotune.data.clean import clean_train, needed_checks
from cotune.errors import ConfigError, DataError

N = 20
TRAIN = np.arange(14, dtype=np.int64)  # rows 14..19 are val / test


def issue(rows=(), score=None, **extra):
    mask = np.zeros(N, dtype=bool)
    mask[list(rows)] = True
    return SimpleNamespace(mask=mask, score=np.zeros(N) if score is None else np.asarray(score, float), extra=extra)


def fake_report():
    outlier = np.full(N, 0.5)
    outlier[[3, 15]] = [0.9, 0.99]  # row 15 is not a training row: never touched
    label_score = np.zeros(N)
    label_score[[5, 6, 7]] = [0.9, 0.3, 0.95]
    suggested = np.arange(N) % 3
    suggested[[5, 6, 7]] = [2, 2, 0]
    return SimpleNamespace(issues={
        "duplicates": issue([1, 16]),
        "conflicting_duplicates": issue([2]),
        "near_duplicates": issue([4, 1]),
        "leakage": issue([8, 17], train_rows=np.array([8])),
        "outliers": issue([3], score=outlier),
        "label_issues": issue([5, 6, 7], score=label_score, suggested=suggested),
    })


@pytest.fixture
def y():
    return (np.arange(N) % 3).astype(np.int64)  # row 7 has label 1, row 5 label 2, row 6 label 0


def test_clean_keep_everything_is_identity(y):
    res = clean_train(TRAIN[::-1], y, SimpleNamespace(issues={}))
    assert np.array_equal(res.idx, TRAIN) and res.idx.dtype == np.int64
    assert np.array_equal(res.y_train, y[TRAIN]) and res.removed == {} and res.relabelled == 0


@pytest.mark.parametrize("options,gone,reason", [
    (dict(duplicates="drop"), [1, 2], "duplicates"),
    (dict(leakage="drop"), [8], "leakage"),
    (dict(outlier_score=0.8), [3], "outliers"),
    (dict(label_issues="drop"), [5, 6, 7], "label_issues"),
    (dict(label_issues="drop", label_threshold=0.5), [5, 7], "label_issues"),
])
def test_clean_each_option(y, options, gone, reason):
    res = clean_train(TRAIN, y, fake_report(), **options)
    assert np.array_equal(res.idx, np.setdiff1d(TRAIN, gone))
    assert np.array_equal(res.y_train, y[res.idx])
    assert res.removed == {reason: len(gone)}


def test_clean_drop_near_counts_each_row_once(y):
    res = clean_train(TRAIN, y, fake_report(), duplicates="drop_near", leakage="drop", outlier_score=0.8)
    assert np.array_equal(res.idx, np.setdiff1d(TRAIN, [1, 2, 3, 4, 8]))
    assert res.removed == {"leakage": 1, "duplicates": 2, "near_duplicates": 1, "outliers": 1}  # row 1 once
    assert sum(res.removed.values()) == len(TRAIN) - len(res.idx) == res.n_before - len(res.idx)


def test_clean_relabel_makes_a_new_label_array(y):
    y_orig = y.copy()
    res = clean_train(TRAIN, y, fake_report(), label_issues="relabel", label_threshold=0.5)
    assert np.array_equal(y, y_orig), "y was modified"
    assert np.array_equal(res.idx, TRAIN)
    expected = y[TRAIN].copy()
    expected[7] = 0  # row 5 is flagged but suggested == its label; row 6 is below the threshold
    assert np.array_equal(res.y_train, expected) and res.relabelled == 1 and res.removed == {}
    assert res.y_train.dtype == y.dtype


def test_needed_checks_and_errors(y):
    assert needed_checks() == set()
    assert needed_checks(duplicates="drop") == {"duplicates", "conflicting_duplicates"}
    assert needed_checks(duplicates="drop_near", leakage="drop", outlier_score=0.7, label_issues="relabel") == {
        "duplicates", "conflicting_duplicates", "near_duplicates", "leakage", "outliers", "label_issues",
        "text_duplicates", "text_overlap"}  # the text checks: tables with text columns
    with pytest.raises(ValueError, match="outliers"):  # the report lacks a needed check: internal error
        clean_train(TRAIN, y, SimpleNamespace(issues={}), outlier_score=0.9)
    for bad in [dict(duplicates="yes"), dict(leakage="drop_near"), dict(outlier_score=0.5), dict(outlier_score=1.2),
                dict(label_issues="fix"), dict(label_threshold=1.0), dict(label_threshold=-0.1)]:
        with pytest.raises(ConfigError) as e:
            clean_train(TRAIN, y, fake_report(), **bad)
        assert "\n" not in str(e.value) and "must be" in str(e.value)
        with pytest.raises(ConfigError):
            needed_checks(**bad)
    with pytest.raises(ConfigError, match="regression"):
        clean_train(TRAIN, y.astype(np.float32), fake_report(), label_issues="drop")
    everything = SimpleNamespace(issues={"outliers": issue(score=np.ones(N))})
    with pytest.raises(DataError):
        clean_train(TRAIN, y, everything, outlier_score=0.6)


# ---- balance ------------------------------------------------------------------------------------

IDX = np.arange(100, 130, dtype=np.int64)
YB = np.array([0] * 20 + [1] * 7 + [2] * 3, dtype=np.int64)


@pytest.mark.parametrize("method,after", [
    ("none", [20, 7, 3]), ("class_weights", [20, 7, 3]), ("balanced_batches", [20, 7, 3]), ("focal", [20, 7, 3]),
    ("oversample", [20, 20, 20]), ("undersample", [3, 3, 3]),
])
def test_balance_methods(method, after):
    res = balance_train(IDX, YB, method, n_classes=4, seed=0)  # class 3 absent from training
    assert res.counts_before == [20, 7, 3, 0] and res.counts_after == after + [0]
    assert res.idx.dtype == np.int64 and len(res.idx) == len(res.y) == len(res.pos) == sum(after)
    assert np.array_equal(res.idx, IDX[res.pos]) and np.array_equal(res.y, YB[res.pos])
    assert res.loss == ("focal" if method == "focal" else None)
    for attr, on in (("weights", "class_weights"), ("sampling_weights", "balanced_batches")):
        w = getattr(res, attr)
        if method != on:
            assert w is None
            continue
        assert w.dtype == np.float32 and w.shape == (30,) and w.mean() == pytest.approx(1.0)
        per_class = np.bincount(YB, weights=w)
        assert np.allclose(per_class, per_class[0])  # every class carries the same total weight
    if method == "oversample":
        assert set(res.idx.tolist()) == set(IDX.tolist())  # every original row kept, minorities repeated
    if method == "undersample":
        assert len(set(res.idx.tolist())) == 9 and set(res.idx[res.y == 2].tolist()) == set(IDX[27:].tolist())


@pytest.mark.parametrize("method", ["oversample", "undersample", "smote"])
def test_balance_is_seeded(method):
    X = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    run = lambda seed: balance_train(IDX, YB, method, n_classes=3, seed=seed, X_train=X, is_tabular=True)
    a, b, c = run(1), run(1), run(2)
    assert np.array_equal(a.idx, b.idx)
    if method == "smote":
        assert np.array_equal(a.X_extra, b.X_extra) and not np.array_equal(a.X_extra, c.X_extra)
    else:
        assert not np.array_equal(a.idx, c.idx)


def test_smote_makes_synthetic_rows():
    X = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32)
    X[YB == 2] += 10  # the minority class lives far away: synthetic rows must land there
    res = balance_train(IDX, YB, "smote", n_classes=3, seed=0, X_train=X, is_tabular=True)
    assert np.array_equal(res.idx, IDX) and res.counts_after == [20, 20, 20]
    assert res.X_extra.shape == (13 + 17, 5) and res.X_extra.dtype == np.float32
    assert sorted(np.bincount(res.y_extra).tolist()) == [0, 13, 17]
    assert (res.X_extra[res.y_extra == 2].mean(1) > 5).all()
    balanced = balance_train(IDX[:14], np.array([0, 1] * 7), "smote", n_classes=2, X_train=X[:14], is_tabular=True)
    assert balanced.X_extra.shape == (0, 5) and balanced.counts_after == [7, 7]


def test_smote_copies_codes_and_token_ids_from_a_real_row_of_the_class():
    """The `whole` columns (categorical codes, token ids) of a synthetic row are those of one training row of its
    class, never a blend; the other columns are interpolated between rows of the class, as before."""
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(size=(30, 2)), rng.integers(2, 400, size=(30, 4))], 1).astype(np.float32)
    X[YB == 2, :2] += 10
    whole = np.array([False, False, True, True, True, True])
    res = balance_train(IDX, YB, "smote", n_classes=3, seed=0, X_train=X, is_tabular=True, whole=whole)
    assert res.X_extra.shape == (30, 6) and res.counts_after == [20, 20, 20]
    for row, c in zip(res.X_extra, res.y_extra):
        same = X[YB == c]
        assert (same[:, 2:] == row[2:]).all(1).any()  # one real row's ids, whole
        assert (same[:, :2].min(0) <= row[:2]).all() and (row[:2] <= same[:, :2].max(0)).all()
    assert len(np.unique(res.X_extra[:, :2], axis=0)) > 20  # interpolated, not copied
    blended = balance_train(IDX, YB, "smote", n_classes=3, seed=0, X_train=X, is_tabular=True)
    assert (blended.X_extra[:, 2:] % 1 != 0).any()  # without the mask SMOTE blends the ids: what the mask is for
    copies = balance_train(IDX, YB, "smote", n_classes=3, seed=0, X_train=X, is_tabular=True, whole=np.ones(6, bool))
    assert all((X[YB == c] == row).all(1).any() for row, c in zip(copies.X_extra, copies.y_extra))  # all whole: copies


def test_balance_errors():
    for kw in [dict(method="smote", is_tabular=False), dict(method="oversample", y=np.linspace(0, 1, 30).astype(np.float32)),
               dict(method="smote", y=np.array([0] * 29 + [1]), is_tabular=True), dict(method="shuffle")]:
        y = kw.pop("y", YB)
        with pytest.raises(ConfigError) as e:
            balance_train(IDX, y, kw.pop("method"), n_classes=3, X_train=np.zeros((30, 2), np.float32), **kw)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="tables"):
        balance_train(IDX, YB, "smote", n_classes=3)
    res = balance_train(IDX, np.linspace(0, 1, 30).astype(np.float32), "none", n_classes=0)
    assert np.array_equal(res.idx, IDX) and res.weights is None
    assert set(METHODS) >= {"none", "class_weights", "oversample", "undersample", "smote", "balanced_batches", "focal"}
