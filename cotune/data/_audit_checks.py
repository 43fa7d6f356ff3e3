"""The built-in audit checks (registered on import by cotune.data.audit) and the expensive models.

Each check is ``fn(ctx: AuditContext) -> Issues``. Row-level checks that act on training rows
(duplicates, near duplicates, conflicting duplicates, outliers, label issues) flag training rows
only; leakage flags held-out rows and their training twins; column checks flag columns.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cotune.data.audit import CLASSIFICATION, OUTLIER, Issues, register_check, severity, worst

NEAR_GRID = 0.05        # near duplicates: every standardized feature within about this many std devs
CONSTANT_SHARE = 0.99   # a column whose top value covers this share of training rows is near-constant
ID_SHARE = 0.95         # a column with this share of distinct values is ID-like
LEAK_SCORE = 0.99       # one feature alone reaching this accuracy / R^2 on validation rows leaks the target
LEAK_ROWS = 50_000      # rows (train / eval) used to fit / score the one-feature models
WEAK_PROXY = 0.7        # a label-issue proxy with a lower out-of-fold accuracy makes its flags 'low' severity
MINORITY = 3.0          # a class with fewer than 1/3 of the largest class's training rows is a minority


def _issues(ctx, name, mask=None, score=None, *, examined, fix, message, count=None, sev=None, unit="rows",
            extra=None, **keys) -> Issues:
    n = len(ctx)
    mask = np.zeros(n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    score = mask.astype(np.float32) if score is None else np.clip(np.asarray(score, dtype=np.float32), 0, 1)
    count = int(mask.sum()) if count is None else int(count)
    share = float(count / examined) if examined else 0.0
    summary = {"count": count, "share": round(share, 6), "severity": sev or severity(share, count),
               "fix": fix if count else "", "message": message, "unit": unit, **keys}
    return Issues(name=name, mask=mask, score=score, summary=summary, extra=dict(extra or {}))


def _rows(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _names(cols, limit=5) -> str:
    cols = list(cols)
    return ", ".join(repr(c) for c in cols[:limit]) + (f" and {len(cols) - limit} more" if len(cols) > limit else "")


def _first_of_group(keys: np.ndarray) -> np.ndarray:
    """For each position, the position of the first element with the same key."""
    codes, uniques = pd.factorize(keys)
    first = np.empty(len(uniques), dtype=np.int64)
    pos = np.arange(len(keys), dtype=np.int64)
    first[codes[::-1]] = pos[::-1]   # the last write wins: the first occurrence
    return first[codes]


def _train_dups(ctx) -> np.ndarray:
    """(N,) int64: for a training row that repeats an earlier training row exactly, that row's index; else -1."""
    if "dups" not in ctx.memo:
        tr = ctx.train_idx
        first = tr[_first_of_group(ctx.row_hash[tr])]
        out = np.full(len(ctx), -1, dtype=np.int64)
        copies = first != tr
        out[tr[copies]] = first[copies]
        ctx.memo["dups"] = out
    return ctx.memo["dups"]


def _sample(idx: np.ndarray, k: int, seed: int) -> np.ndarray:
    return idx if len(idx) <= k else np.sort(np.random.default_rng(seed).choice(idx, k, replace=False))


# ----------------------------------------------------------------------------------------------
# table checks


@register_check("missing_values", modalities=("tabular",))
def missing_values(ctx) -> Issues:
    X, ds = ctx.ds.X, ctx.ds
    miss = X.isna().to_numpy(dtype=bool, copy=True)
    for j, c in enumerate(X.columns):
        if c in ds.numeric:
            v = pd.to_numeric(X[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            miss[:, j] |= ~np.isfinite(v)
    counts = miss.sum(axis=0)
    columns = {str(c): int(k) for c, k in zip(X.columns, counts) if k}
    mask = miss.any(axis=1)
    n = int(mask.sum())
    msg = (f"{_rows(n, 'row')} ({n / len(ctx):.1%}) have missing values in {_names(columns)}; preprocessing imputes "
           "the training median (numeric) or a '__missing__' category." if n else "No missing values.")
    sev = min(severity(n / len(ctx), n), "medium", key=["none", "low", "medium", "high"].index)  # imputed anyway
    return _issues(ctx, "missing_values", mask, miss.mean(axis=1), examined=len(ctx), sev=sev, message=msg,
                   fix="preprocessing imputes (median / '__missing__')", columns=columns)


def _top_share(s: pd.Series) -> float:
    return float(s.value_counts(dropna=False, normalize=True).iloc[0]) if len(s) else 1.0


@register_check("constant_columns", modalities=("tabular",), level="columns")
def constant_columns(ctx) -> Issues:
    X = ctx.ds.X.iloc[ctx.train_idx]
    probe = X.iloc[_sample(np.arange(len(X)), 2000, ctx.seed)]
    shares = {}
    for c in X.columns:
        if _top_share(probe[c]) >= 0.9:  # a cheap probe first: a column far from constant is skipped
            share = _top_share(X[c])
            if share >= CONSTANT_SHARE:
                shares[str(c)] = round(share, 6)
    cols = list(shares)
    msg = (f"{_rows(len(cols), 'column')} ({_names(cols)}) hold one value in at least {CONSTANT_SHARE:.0%} of the "
           "training rows and carry almost no information." if cols else "No constant or near-constant columns.")
    return _issues(ctx, "constant_columns", examined=X.shape[1], count=len(cols), unit="columns",
                   sev="low" if cols else "none", fix=f"data.drop={cols}", message=msg, columns=cols, top_share=shares)


def _looks_like_id(s: pd.Series, name: str, n: int, numeric: bool) -> bool:
    s = s.dropna()
    if len(s) < 20 or s.nunique() < ID_SHARE * len(s):
        return False
    if numeric:
        v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.all(np.mod(v, 1) == 0):
            return False  # a continuous measurement, not an identifier
        named = any(t in ("id", "key", "index", "uuid") for t in str(name).lower().replace("-", "_").split("_"))
        return named or (v.max() - v.min() + 1) <= 10 * max(n, 1)  # a dense integer range (row numbers, keys)
    return True  # text / categorical


@register_check("id_like_columns", modalities=("tabular",), level="columns")
def id_like_columns(ctx) -> Issues:
    X = ctx.ds.X.iloc[ctx.train_idx]
    probe = X.iloc[_sample(np.arange(len(X)), 2000, ctx.seed)]
    cols = [str(c) for c in X.columns
            if probe[c].nunique() >= 0.9 * probe[c].notna().sum()
            and _looks_like_id(X[c], c, len(X), c in ctx.ds.numeric)]
    msg = (f"{_rows(len(cols), 'column')} ({_names(cols)}) hold a different value in almost every row, like an "
           "identifier, which a model can only memorize." if cols else "No identifier-like columns.")
    return _issues(ctx, "id_like_columns", examined=X.shape[1], count=len(cols), unit="columns",
                   sev="medium" if cols else "none", fix=f"data.drop={cols}", message=msg, columns=cols)


def _one_feature_scores(ctx, tr, ev) -> dict:
    """Validation accuracy (classification) or R^2 (regression) of a model on each single column."""
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    ds, clf = ctx.ds, ctx.classification
    y_tr, y_ev = ds.y[tr], ds.y[ev]
    out = {}
    tree = DecisionTreeClassifier if clf else DecisionTreeRegressor
    for j, c in enumerate(ctx.pre.numeric_):
        x = ctx.features[:, j]
        out[c["name"]] = tree(max_depth=8, min_samples_leaf=5, random_state=ctx.seed).fit(x[tr, None], y_tr).predict(x[ev, None])
    for c in ds.categorical:
        codes, _ = pd.factorize(ds.X[c].iloc[np.concatenate([tr, ev])], use_na_sentinel=False)
        c_tr, c_ev = codes[:len(tr)], codes[len(tr):]
        frame = pd.DataFrame({"c": c_tr, "y": y_tr})
        if clf:
            table = frame.groupby(["c", "y"]).size().reset_index(name="k").sort_values("k").drop_duplicates("c", keep="last")
            fallback = np.bincount(y_tr).argmax()
        else:
            table = frame.groupby("c")["y"].mean().reset_index()
            fallback = y_tr.mean()
        lookup = pd.Series(table["y"].to_numpy(), index=table["c"].to_numpy())
        out[str(c)] = lookup.reindex(c_ev).fillna(fallback).to_numpy()
    scores = {}
    for name, pred in out.items():
        if clf:
            err = float(np.mean(pred != y_ev))
            base = 1.0 - np.bincount(y_ev).max() / len(y_ev)
            scores[name] = (1.0 - err, err <= 1 - LEAK_SCORE and err <= 0.1 * base)
        else:
            var = float(np.var(y_ev))
            r2 = 1.0 - float(np.mean((pred - y_ev) ** 2)) / var if var > 0 else 0.0
            scores[name] = (r2, r2 >= LEAK_SCORE)
    return scores


@register_check("target_leak_features", modalities=("tabular",), level="columns")
def target_leak_features(ctx) -> Issues:
    ev = ctx.val_idx
    tr = ctx.train_idx
    if len(ev) < 30:  # no usable validation part: hold out 30% of the training rows
        ev = _sample(tr, max(1, int(0.3 * len(tr))), ctx.seed + 1)
        tr = np.setdiff1d(tr, ev)
    n_cols = ctx.ds.X.shape[1]
    if len(tr) < 10 or len(ev) < 10:
        return _issues(ctx, "target_leak_features", examined=n_cols, count=0, unit="columns", fix="", columns=[],
                       message="Too few rows to test single features against the target.")
    scores = _one_feature_scores(ctx, _sample(tr, LEAK_ROWS, ctx.seed), _sample(ev, LEAK_ROWS, ctx.seed))
    cols = [c for c, (_, leak) in scores.items() if leak]
    metric = "accuracy" if ctx.classification else "R^2"
    msg = (f"{_rows(len(cols), 'column')} ({_names(cols)}) predict the target almost perfectly on their own "
           f"({metric} >= {LEAK_SCORE}): they likely leak the answer." if cols else
           "No single feature predicts the target almost perfectly.")
    return _issues(ctx, "target_leak_features", examined=n_cols, count=len(cols), unit="columns",
                   sev="high" if cols else "none", fix=f"data.drop={cols}", message=msg, columns=cols,
                   metric=metric, scores={c: round(float(s), 4) for c, (s, _) in scores.items() if c in cols})


# ----------------------------------------------------------------------------------------------
# duplicates and leakage


@register_check("duplicates")
def duplicates(ctx) -> Issues:
    first = _train_dups(ctx)
    mask = first >= 0
    n, groups = int(mask.sum()), len(np.unique(first[mask]))
    msg = (f"{_rows(n, 'training row')} repeat another training row exactly ({_rows(groups, 'group')}); dropping "
           "them keeps one copy of each." if n else "No exact duplicate training rows.")
    return _issues(ctx, "duplicates", mask, examined=len(ctx.train_idx), fix="data.clean.duplicates=drop",
                   message=msg, groups=groups, extra={"first": first})


@register_check("near_duplicates")
def near_duplicates(ctx) -> Issues:
    tr = ctx.train_idx
    flag = np.zeros(len(tr), dtype=bool)
    for keys in ctx.grid_keys(NEAR_GRID):
        k = keys[tr]
        flag |= _first_of_group(k) != np.arange(len(k))
    mask = np.zeros(len(ctx), dtype=bool)
    mask[tr[flag]] = True
    mask &= _train_dups(ctx) < 0  # exact duplicates are the 'duplicates' check's
    n = int(mask.sum())
    msg = (f"{_rows(n, 'training row')} are near copies of another training row (every feature within about "
           f"{NEAR_GRID} standard deviations) without being exact duplicates." if n else "No near-duplicate training rows.")
    return _issues(ctx, "near_duplicates", mask, examined=len(tr), fix="data.clean.duplicates=drop_near",
                   message=msg, grid=NEAR_GRID)


@register_check("conflicting_duplicates", tasks=CLASSIFICATION)
def conflicting_duplicates(ctx) -> Issues:
    tr = ctx.train_idx
    codes, _ = pd.factorize(ctx.row_hash[tr])
    size = np.bincount(codes)
    cand = size[codes] > 1
    frame = pd.DataFrame({"g": codes[cand], "y": ctx.ds.y[tr][cand]})
    labels = frame.groupby("g")["y"].transform("nunique").to_numpy()
    same = frame.groupby(["g", "y"])["y"].transform("size").to_numpy()
    mask, score = np.zeros(len(ctx), dtype=bool), np.zeros(len(ctx), dtype=np.float32)
    rows = tr[cand][labels > 1]
    mask[rows] = True
    score[rows] = 1.0 - same[labels > 1] / size[frame["g"].to_numpy()[labels > 1]]
    n, groups = int(mask.sum()), int(frame["g"][labels > 1].nunique())
    msg = (f"{_rows(n, 'training row')} in {_rows(groups, 'group')} of identical features carry different labels; "
           "at most one label per group can be right." if n else "No identical training rows with different labels.")
    return _issues(ctx, "conflicting_duplicates", mask, score, examined=len(tr), fix="data.clean.duplicates=drop",
                   message=msg, groups=groups)


@register_check("leakage")
def leakage(ctx) -> Issues:
    tr = ctx.train_idx
    held = np.concatenate([ctx.val_idx, ctx.test_idx])
    hit_held = np.zeros(len(held), dtype=bool)
    hit_train = np.zeros(len(tr), dtype=bool)
    counts = []
    for keys in [ctx.row_hash] + ctx.grid_keys(NEAR_GRID):   # exact first, then the two near-duplicate grids
        in_train = np.isin(keys[held], keys[tr])
        hit_held |= in_train
        hit_train |= np.isin(keys[tr], keys[held][in_train])
        counts.append(int(hit_held.sum()))
    mask = np.zeros(len(ctx), dtype=bool)
    mask[held[hit_held]] = mask[tr[hit_train]] = True
    per = {p: int((mask & (ctx.part == p)).sum()) for p in ("val", "test")}
    n_held = per["val"] + per["test"]
    share = n_held / len(held) if len(held) else 0.0
    msg = (f"{per['val']} validation and {per['test']} test rows duplicate (exactly or nearly) one of "
           f"{_rows(int(hit_train.sum()), 'training row')}, so held-out scores overstate performance."
           if n_held else "No validation or test row duplicates a training row.")
    return _issues(ctx, "leakage", mask, examined=len(tr) + len(held), sev=worst(severity(share), "medium") if n_held
                   else "none", fix="data.clean.leakage=drop", message=msg, val=per["val"], test=per["test"],
                   train_twins=int(hit_train.sum()), exact=counts[0], heldout_share=round(share, 6),
                   extra={"train_rows": tr[hit_train], "heldout_rows": held[hit_held]})


# ----------------------------------------------------------------------------------------------
# statistics: outliers, class balance, label issues


def outlier_scores(F: np.ndarray, train_idx: np.ndarray, n_numeric: int, *, seed: int, n_estimators: int,
                   max_samples: int, max_fit: int, threshold: float = 0.6) -> dict:
    """Score every row: max of an IsolationForest score (fitted on <= max_fit training rows) and, for
    the first `n_numeric` (standardized numeric) columns, a per-cell score 2^(-1/e) with e = |x - median|
    / (1.79 * 95th percentile of |x - median| on train): 0.5 at 3.5 sigma for a normal column, 0.6 at
    4.75 sigma, 0.78 at 10 sigma; the 95th percentile stays put with up to 5% outliers in a column.
    (IsolationForest alone misses single extreme cells among many columns.)"""
    from sklearn.ensemble import IsolationForest

    fit = _sample(train_idx, max_fit, seed)
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


@register_check("outliers", expensive=True)
def outliers(ctx) -> Issues:
    t = OUTLIER["threshold"]
    s = ctx.outlier_scores()
    mask = (s >= t) & ctx.is_train
    n = int(mask.sum())
    msg = (f"{_rows(n, 'training row')} look anomalous (outlier score >= {t}: extreme values or an unusual "
           "combination of them)." if n else f"No training row has an outlier score >= {t}.")
    return _issues(ctx, "outliers", mask, s, examined=len(ctx.train_idx), fix=f"data.clean.outlier_score={t}",
                   message=msg, threshold=t, extra={"scores": s})


@register_check("class_imbalance", tasks=CLASSIFICATION, level="dataset")
def class_imbalance(ctx) -> Issues:
    counts = np.bincount(ctx.ds.y[ctx.train_idx], minlength=ctx.ds.n_classes)
    total = max(int(counts.sum()), 1)
    ratio = float(counts.max() / counts.min()) if counts.min() > 0 else float("inf")
    minority = [str(c) for c, k in zip(ctx.ds.classes, counts) if k * MINORITY < counts.max()]
    sev = "high" if ratio >= 10 else "medium" if ratio >= 3 else "low" if ratio >= 1.5 else "none"
    msg = (f"The training classes are imbalanced: the largest is {ratio:.1f}x the smallest "
           f"({ctx.ds.classes[int(np.argmin(counts))]!r}, {counts.min() / total:.1%} of the training rows)."
           if sev != "none" else "The classes are balanced.")
    n_minor = int(sum(k for c, k in zip(ctx.ds.classes, counts) if str(c) in minority))
    return _issues(ctx, "class_imbalance", examined=total, count=len(minority), unit="classes", sev=sev,
                   fix="data.balance=class_weights" if sev != "none" else "", message=msg,
                   ratio=round(ratio, 4) if np.isfinite(ratio) else None, minority_share=round(counts.min() / total, 6),
                   minority_classes=minority, minority_rows=n_minor,
                   class_counts={str(c): int(k) for c, k in zip(ctx.ds.classes, counts)})


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
        fit = _sample(fit, max_fit, seed + k)
        present = np.unique(y[fit])
        if len(present) < 2:
            out[pred, present[0]] = 1.0
            continue
        model = _fit_proxy(X[fit], y[fit], C=C, max_iter=max_iter, seed=seed)
        for s in range(0, len(pred), 65536):
            rows = pred[s:s + 65536]
            out[np.ix_(rows, model.classes_)] = model.predict_proba(X[rows].astype(np.float64))
    return out


@register_check("label_issues", tasks=CLASSIFICATION, expensive=True)
def label_issues(ctx) -> Issues:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    tr = ctx.train_idx
    P = ctx.pred_probs()
    labels = ctx.ds.y[tr]
    present = np.unique(labels)   # cleanlab wants every class present: drop the absent ones' columns
    remap = np.searchsorted(present, labels)
    p = P[tr][:, present].astype(np.float64)
    p = np.where(p.sum(1, keepdims=True) > 0, p, 1.0) / np.maximum(p.sum(1, keepdims=True), 1e-12)
    mask, score = np.zeros(len(ctx), dtype=bool), np.zeros(len(ctx), dtype=np.float32)
    suggested = np.full(len(ctx), -1, dtype=np.int64)
    acc = float(np.mean(P[tr].argmax(1) == labels)) if len(tr) else 0.0
    if len(present) >= 2:
        mask[tr] = find_label_issues(remap, p, filter_by="prune_by_noise_rate", n_jobs=1)
        score[tr] = 1.0 - get_label_quality_scores(remap, p, method="self_confidence")
    suggested[tr] = P[tr].argmax(1)
    n, weak = int(mask.sum()), acc < WEAK_PROXY
    msg = (f"{_rows(n, 'training label')} look wrong: a cross-validated proxy model confidently predicts another "
           f"class (proxy accuracy {acc:.1%}" + ("; the proxy is weak on this data, so many flags may be its own "
                                                 "mistakes)." if weak else ").") if n
           else "No training label looks wrong to the proxy model.")
    sev = "low" if weak and n else None   # a weak proxy's flags are not worth an alarm
    return _issues(ctx, "label_issues", mask, score, examined=len(tr), fix="data.clean.label_issues=drop",
                   message=msg, sev=sev, proxy="logistic_regression", proxy_accuracy=round(acc, 4), proxy_weak=weak,
                   extra={"pred_probs": P, "suggested": suggested})
