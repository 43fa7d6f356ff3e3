"""The audit's expensive models, on plain arrays: the label-issue proxy's out-of-fold probabilities
and the outlier scores.

`cotune.data.audit.AuditContext` calls `oof_pred_probs` / `outlier_scores` (through this module,
so tests can monkeypatch them and `_fit_proxy`) and caches their results on disk. This module
imports no other audit module; the settings they run with are `PROXY` / `OUTLIER` in
`cotune.data.audit_registry`.
"""
from __future__ import annotations

import numpy as np


def sample_rows(idx: np.ndarray, k: int, seed: int) -> np.ndarray:
    """`idx` itself if it has at most `k` entries, else `k` of them drawn with `seed`, sorted."""
    return idx if len(idx) <= k else np.sort(np.random.default_rng(seed).choice(idx, k, replace=False))


def outlier_scores(F: np.ndarray, train_idx: np.ndarray, n_numeric: int, *, seed: int, n_estimators: int,
                   max_samples: int, max_fit: int, threshold: float = 0.6) -> dict:
    """Score every row: max of an IsolationForest score (fitted on <= max_fit training rows) and, for
    the first `n_numeric` (standardized numeric) columns, a per-cell score 2^(-1/e) with e = |x - median|
    / (1.79 * 95th percentile of |x - median| on train): 0.5 at 3.5 sigma for a normal column, 0.6 at
    4.75 sigma, 0.78 at 10 sigma; the 95th percentile stays put with up to 5% outliers in a column.
    (IsolationForest alone misses single extreme cells among many columns.)"""
    from sklearn.ensemble import IsolationForest

    fit = sample_rows(train_idx, max_fit, seed)
    scores = np.zeros(len(F), dtype=np.float32)
    if len(fit) < 8:
        return scores
    iso = IsolationForest(n_estimators=n_estimators, max_samples=min(max_samples, len(fit)), random_state=seed)
    iso.fit(F[fit])
    if n_numeric:
        V = F[fit, :n_numeric]
        med = np.median(V, axis=0)
        q = np.quantile(np.abs(V - med), 0.95, axis=0)
        cols = np.flatnonzero(q > 1e-6)
        inv = 1.0 / (1.79 * q[cols])
    for s in range(0, len(F), 65536):
        chunk = F[s:s + 65536]
        sc = -iso.score_samples(chunk)
        if n_numeric and len(cols):
            e = (np.abs(chunk[:, cols] - med[cols]) * inv).max(axis=1)
            sc = np.maximum(sc, np.where(e > 0, np.exp2(-1.0 / np.maximum(e, 1e-9)), 0.0))
        scores[s:s + 65536] = sc
    return np.clip(scores, 0, 1)


def _fit_proxy(X: np.ndarray, y: np.ndarray, *, C: float, max_iter: int, seed: int):
    """The label-issue proxy: multinomial logistic regression (tests monkeypatch this)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=max_iter, random_state=seed).fit(X.astype(np.float64), y)


def oof_pred_probs(X: np.ndarray, y: np.ndarray, n_classes: int, *, folds: int, seed: int, C: float,
                   max_iter: int, max_fit: int) -> np.ndarray:
    """(n, K) out-of-fold probabilities by stratified K-fold; each fold's model is fitted on at most
    `max_fit` (random) rows of its training folds and predicts every row of its held-out fold."""
    from sklearn.model_selection import StratifiedKFold

    out = np.zeros((len(y), n_classes), dtype=np.float32)
    counts = np.bincount(y, minlength=n_classes)
    if (counts > 0).sum() < 2 or counts.max() < 2:
        out[np.arange(len(y)), y] = 1.0
        return out
    skf = StratifiedKFold(n_splits=int(min(folds, counts.max())), shuffle=True, random_state=seed)
    for k, (fit, pred) in enumerate(skf.split(np.zeros(len(y)), y)):
        fit = sample_rows(fit, max_fit, seed + k)
        present = np.unique(y[fit])
        if len(present) < 2:
            out[pred, present[0]] = 1.0
            continue
        model = _fit_proxy(X[fit], y[fit], C=C, max_iter=max_iter, seed=seed)
        for s in range(0, len(pred), 65536):
            rows = pred[s:s + 65536]
            out[np.ix_(rows, model.classes_)] = model.predict_proba(X[rows].astype(np.float64))
    return out
