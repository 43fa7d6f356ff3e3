"""The audit's expensive models, on plain arrays: the label-issue proxy's out-of-fold probabilities
and the outlier scores.

`cotune.data.audit.AuditContext` calls `oof_pred_probs` / `outlier_scores` (through this module,
so tests can monkeypatch them and `_fit_proxy`) and caches their results on disk. This module
imports no other audit module; the settings they run with are `PROXY` / `OUTLIER` in
`cotune.data.audit_registry`.

The label-issue proxies (`PROXY_KINDS`): 'linear' (multinomial logistic regression), 'gbdt' (LightGBM,
one thread) and 'net' (a small network of the modality's family from the model registry, trained with
the generalized cross-entropy, which noisy labels pull less than the plain cross-entropy).
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


PROXY_KINDS = ("linear", "gbdt", "net")


def _fit_proxy(kind: str, X: np.ndarray, y: np.ndarray, n_classes: int, *, seed: int, settings: dict):
    """One fold's label-issue proxy, fitted on (X, y); returns predict(X) -> (n, n_classes) probabilities.
    (Tests monkeypatch this.) `settings` holds every kind's settings (audit_registry.PROXY)."""
    if kind == "net":
        return _fit_net(X, y, n_classes, seed=seed, **settings["net"])
    if kind == "gbdt":
        import lightgbm as lgb

        model = lgb.LGBMClassifier(**settings["gbdt"], random_state=seed, n_jobs=1, verbose=-1)
    else:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(**settings["linear"], random_state=seed)
    flat = X.reshape(len(X), -1).astype(np.float64)
    model.fit(flat, y)

    def predict(Z: np.ndarray) -> np.ndarray:
        out = np.zeros((len(Z), n_classes), dtype=np.float32)
        out[:, model.classes_] = model.predict_proba(Z.reshape(len(Z), -1).astype(np.float64))
        return out
    return predict


def _fit_net(X: np.ndarray, y: np.ndarray, n_classes: int, *, seed: int, family: str, knobs: dict, epochs: int,
             batch_size: int, lr: float, weight_decay: float, gce_q: float):
    """A small network of the modality's family, trained with the generalized cross-entropy (robust to the
    noisy labels it is there to find) for a fixed number of epochs on a one-cycle schedule."""
    import torch

    from cotune.models.registry import create_model

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = create_model(family, X.shape[1:], n_classes, **knobs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    Xt, yt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)), torch.from_numpy(y.astype(np.int64))
    steps = max(1, -(-len(y) // batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for s in range(steps):
            rows = order[s * batch_size:(s + 1) * batch_size]
            if len(rows) < 2:  # batch norm needs two samples
                continue
            p = torch.softmax(model(Xt[rows]), dim=-1).gather(1, yt[rows, None]).clamp_min(1e-7)
            loss = ((1 - p ** gce_q) / gce_q).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()

    def predict(Z: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate([torch.softmax(model(torch.from_numpy(np.ascontiguousarray(Z[s:s + 4096], dtype=np.float32))),
                                                 dim=-1).numpy() for s in range(0, len(Z), 4096)]) if len(Z) else \
                np.zeros((0, n_classes), np.float32)
    return predict


def oof_pred_probs(X: np.ndarray, y: np.ndarray, n_classes: int, *, kind: str, folds: int, seed: int, settings: dict,
                   max_fit: int, X_other: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, K) out-of-fold probabilities of `kind`'s proxy by stratified K-fold over the rows of X, and (m, K)
    for the rows of `X_other` (rows the folds never see: the mean of the K fold models' predictions). Each
    fold's model is fitted on at most `max_fit` (random) rows of its training folds."""
    from sklearn.model_selection import StratifiedKFold

    out = np.zeros((len(y), n_classes), dtype=np.float32)
    other = np.zeros((0 if X_other is None else len(X_other), n_classes), dtype=np.float32)
    counts = np.bincount(y, minlength=n_classes)
    if (counts > 0).sum() < 2 or counts.max() < 2:
        out[np.arange(len(y)), y] = 1.0
        if len(other):
            other[:, np.argmax(counts)] = 1.0
        return out, other
    skf = StratifiedKFold(n_splits=int(min(folds, counts.max())), shuffle=True, random_state=seed)
    n_folds = 0
    for k, (fit, pred) in enumerate(skf.split(np.zeros(len(y)), y)):
        fit = sample_rows(fit, max_fit, seed + k)
        present = np.unique(y[fit])
        n_folds += 1
        if len(present) < 2:
            out[pred, present[0]] = 1.0
            other[:, present[0]] += 1.0
            continue
        predict = _fit_proxy(kind, X[fit], y[fit], n_classes, seed=seed + k, settings=settings)
        for s in range(0, len(pred), 65536):
            rows = pred[s:s + 65536]
            out[rows] = predict(X[rows])
        for s in range(0, len(other), 65536):
            other[s:s + 65536] += predict(X_other[s:s + 65536])
    return out, other / max(n_folds, 1)
