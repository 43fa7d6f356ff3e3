"""The built-in audit checks of a table's columns (tabular data only): missing values, constant
columns, identifier-like columns, features that leak the target.

Imported (and so registered) by `cotune.data.audit` and by `cotune.data.audit_checks_rows`, before
that module's checks: the registration order is the order of `list_checks()`. Each check is
``fn(ctx: AuditContext) -> Issues``; `missing_values` flags rows, the others flag columns.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cotune.data.audit_models import sample_rows
from cotune.data.audit_registry import Issues, make_issues, name_list, plural, register_check, severity

CONSTANT_SHARE = 0.99   # a column whose top value covers this share of training rows is near-constant
ID_SHARE = 0.95         # a column with this share of distinct values is ID-like
LEAK_SCORE = 0.99       # one feature alone reaching this accuracy / R^2 on validation rows leaks the target
LEAK_ROWS = 50_000      # rows (train / eval) used to fit / score the one-feature models


# ----------------------------------------------------------------------------------------------
# checks of table columns


@register_check("missing_values", modalities=("tabular",))
def missing_values(ctx) -> Issues:
    X, ds = ctx.ds.X, ctx.ds
    miss = X.isna().to_numpy(dtype=bool, copy=True)
    miss[:, X.columns.isin(ds.text)] = False  # missing or empty texts are the text_empty check's
    for j, c in enumerate(X.columns):
        if c in ds.numeric:
            v = pd.to_numeric(X[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            miss[:, j] |= ~np.isfinite(v)
    counts = miss.sum(axis=0)
    columns = {str(c): int(k) for c, k in zip(X.columns, counts) if k}
    mask = miss.any(axis=1)
    n = int(mask.sum())
    msg = (f"{plural(n, 'row')} ({n / len(ctx):.1%}) have missing values in {name_list(columns)}; preprocessing imputes "
           "the training median (numeric) or a '__missing__' category." if n else "No missing values.")
    sev = min(severity(n / len(ctx), n), "medium", key=["none", "low", "medium", "high"].index)  # imputed anyway
    return make_issues(ctx, "missing_values", mask, miss.mean(axis=1), examined=len(ctx), sev=sev, message=msg,
                       fix="preprocessing imputes (median / '__missing__')", columns=columns)


def _top_share(s: pd.Series) -> float:
    return float(s.value_counts(dropna=False, normalize=True).iloc[0]) if len(s) else 1.0


@register_check("constant_columns", modalities=("tabular",), level="columns")
def constant_columns(ctx) -> Issues:
    X = ctx.ds.X.iloc[ctx.train_idx]
    probe = X.iloc[sample_rows(np.arange(len(X)), 2000, ctx.seed)]
    shares = {}
    for c in X.columns:
        if _top_share(probe[c]) >= 0.9:  # a cheap probe first: a column far from constant is skipped
            share = _top_share(X[c])
            if share >= CONSTANT_SHARE:
                shares[str(c)] = round(share, 6)
    cols = list(shares)
    msg = (f"{plural(len(cols), 'column')} ({name_list(cols)}) hold one value in at least {CONSTANT_SHARE:.0%} of the "
           "training rows and carry almost no information." if cols else "No constant or near-constant columns.")
    return make_issues(ctx, "constant_columns", examined=X.shape[1], count=len(cols), unit="columns",
                       sev="low" if cols else "none", fix=f"data.drop={cols}", message=msg, columns=cols,
                       top_share=shares)


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
    probe = X.iloc[sample_rows(np.arange(len(X)), 2000, ctx.seed)]
    cols = [str(c) for c in X.columns
            if c not in ctx.ds.text  # free text is distinct in almost every row without being an identifier
            and probe[c].nunique() >= 0.9 * probe[c].notna().sum()
            and _looks_like_id(X[c], c, len(X), c in ctx.ds.numeric)]
    msg = (f"{plural(len(cols), 'column')} ({name_list(cols)}) hold a different value in almost every row, like an "
           "identifier, which a model can only memorize." if cols else "No identifier-like columns.")
    return make_issues(ctx, "id_like_columns", examined=X.shape[1], count=len(cols), unit="columns",
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
        ev = sample_rows(tr, max(1, int(0.3 * len(tr))), ctx.seed + 1)
        tr = np.setdiff1d(tr, ev)
    n_cols = ctx.ds.X.shape[1]
    if len(tr) < 10 or len(ev) < 10:
        return make_issues(ctx, "target_leak_features", examined=n_cols, count=0, unit="columns", fix="", columns=[],
                           message="Too few rows to test single features against the target.")
    scores = _one_feature_scores(ctx, sample_rows(tr, LEAK_ROWS, ctx.seed), sample_rows(ev, LEAK_ROWS, ctx.seed))
    cols = [c for c, (_, leak) in scores.items() if leak]
    metric = "accuracy" if ctx.classification else "R^2"
    msg = (f"{plural(len(cols), 'column')} ({name_list(cols)}) predict the target almost perfectly on their own "
           f"({metric} >= {LEAK_SCORE}): they likely leak the answer." if cols else
           "No single feature predicts the target almost perfectly.")
    return make_issues(ctx, "target_leak_features", examined=n_cols, count=len(cols), unit="columns",
                       sev="high" if cols else "none", fix=f"data.drop={cols}", message=msg, columns=cols,
                       metric=metric, scores={c: round(float(s), 4) for c, (s, _) in scores.items() if c in cols})
