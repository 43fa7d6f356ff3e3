"""Honest baselines for tables: a linear model and LightGBM, fitted on the rows the network trains on.

    result = fit_baselines(cfg, ds, threads=1)      # {} for images and sequences

Rows: the split of `pipeline.prepare` and its cleaned training rows (after data.fraction and data.clean,
relabelled labels included; before balancing, SMOTE and augmentation, which are the network's own training
devices). Each model is fitted on the training rows and scored on the validation rows; for the test rows it is
refitted on train + validation (prepare(merge_val=True): the rows, and their cleaning, that the search's final
model trains on) and scored once on test. Scores come from `cotune.evaluate.evaluate`, so their keys are the
network's (accuracy, f1_macro, log_loss, roc_auc, ece, rmse, r2, ...); only the scalar ones are kept.

    linear    LogisticRegression(max_iter=2000) / Ridge(alpha=1.0) on cotune's default Preprocessor encoding
              fitted on the training rows (median-imputed, standardized numeric columns + one-hot categoricals,
              each text column as the TF-IDF of its word 1-2-grams and character 2-5-grams, fitted on the
              training rows: the classic strong text baseline)
    lightgbm  LGBMClassifier / LGBMRegressor(n_jobs=threads, verbose=-1, random_state=runtime.seed) on the raw
              columns: numeric as float, categoricals as pandas 'category' with the training rows' categories,
              text columns as hashed word unigram + bigram counts (cotune.data.text.hashed_words)

Regression models fit and predict the target in its own units. A model that fails is recorded as
{"error": "<one line>"} and the other still runs. Images and sequences get no baselines ({}): a linear model
or boosted trees over raw pixels or time steps is no yardstick for a convolutional network.

The result (fit.json 'baselines'):

    {"rows": {"train": n, "val": n, "test": n, "train_val": n}, "cleaning": {data.clean settings},
     "test_trained_on": "train+val", "seconds": s,
     "models": {"linear": {"name": "LogisticRegression", "val": {...}, "test": {...}, "seconds": s},
                "lightgbm": {"name": "LGBMClassifier", "val": {...}, "test": {...}, "seconds": s}}}
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd

from cotune.config import RunConfig
from cotune.data.preprocess import _category_strings
from cotune.data.text import NGRAMS, hashed_words, text_values
from cotune.errors import one_line
from cotune.evaluate import evaluate
from cotune.pipeline import TrainingSet, prepare

MODELS = ("linear", "lightgbm")


def fit_baselines(cfg: RunConfig, ds, threads: int = 1) -> dict:
    """Fit and score the linear and LightGBM baselines on `ds` with cfg's split and cleaning (see the module
    docstring for the rows and the result). Tables only: returns {} for images and sequences."""
    if ds.modality != "tabular":
        return {}
    from threadpoolctl import threadpool_limits
    t0 = time.time()
    with threadpool_limits(limits=max(1, int(threads))), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence and feature-name warnings: the scores tell
        fit_part = prepare(cfg, ds)
        va, te = fit_part.val, fit_part.test
        refit_part = prepare(cfg, ds, merge_val=True) if len(va) and len(te) else fit_part
        models = {}
        for key in MODELS:
            t = time.time()
            try:
                name, val = _fit_score(key, ds, fit_part, va, threads, cfg.runtime.seed) if len(va) else (None, None)
                name, test = _fit_score(key, ds, refit_part, te, threads, cfg.runtime.seed) if len(te) else (name, None)
                models[key] = {"name": name, "val": val, "test": test, "seconds": round(time.time() - t, 3)}
            except Exception as err:  # one model's failure costs only its row
                models[key] = {"error": one_line(f"{type(err).__name__}: {err}")[:300]}
    rows = {"train": len(fit_part.train_idx), "val": len(va), "test": len(te), "train_val": len(refit_part.train_idx)}
    return {"rows": rows, "cleaning": cfg.data.clean.model_dump(), "test_trained_on": "train+val" if len(va) else "train",
            "seconds": round(time.time() - t0, 3), "models": models}


def fit_baselines_safe(cfg: RunConfig, ds, threads: int = 1) -> dict:
    """fit_baselines, with any unexpected exception recorded as {"error": "<one line>"} instead of raised."""
    try:
        return fit_baselines(cfg, ds, threads)
    except Exception as err:
        return {"error": one_line(f"{type(err).__name__}: {err}")[:300]}


def match_cleaning(result: dict, cfg: RunConfig, final_cfg: RunConfig, ds, deadline: float | None,
                   threads: int = 1) -> dict:
    """The baselines with the final model's data.clean settings: `result` (fitted with cfg's) when they are the
    same; refitted with final_cfg's when the deadline leaves the first fit's measured seconds; else `result` with
    a "cleaning_note" that says so."""
    if not result or "error" in result or final_cfg.data.clean == cfg.data.clean:
        return result
    theirs, final = cfg.data.clean.model_dump(), final_cfg.data.clean.model_dump()
    diff = ", ".join(f"data.clean.{k}={final[k]!r}" for k in final if final[k] != theirs.get(k))
    need = float(result.get("seconds") or 0.0)
    if deadline is not None and time.time() + need > deadline:
        return {**result, "cleaning_note": f"fitted with the search's base cleaning; the final model's ({diff}) "
                                           f"differs, and refitting them (about {need:.0f} s) did not fit in the budget"}
    again = fit_baselines_safe(final_cfg, ds, threads)
    if "error" in again:
        return {**result, "cleaning_note": f"fitted with the search's base cleaning; refitting them with the final "
                                           f"model's ({diff}) failed: {again['error']}"}
    return again


# ---------------------------------------------------------------------------------------------

def _fit_score(key: str, ds, part: TrainingSet, rows: np.ndarray, threads: int, seed: int) -> tuple[str, dict]:
    """(model name, scalar metrics on `rows`) of one baseline fitted on `part`'s cleaned training rows."""
    fit = _linear if key == "linear" else _lightgbm
    name, output = fit(ds, part, rows, threads, seed)
    metrics = evaluate(ds.y[rows], output, ds.task, classes=list(ds.classes))
    return name, {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}


def _proba(model, X, k: int) -> np.ndarray:
    """(N, k) class probabilities: a class absent from the training rows gets probability 0."""
    p = np.asarray(model.predict_proba(X), dtype=np.float64)
    full = np.zeros((len(p), k))
    full[:, np.asarray(model.classes_, dtype=np.int64)] = p
    return full


def _output(model, X, ds) -> np.ndarray:
    return np.asarray(model.predict(X), dtype=np.float64) if ds.task == "regression" else _proba(model, X, ds.n_classes)


def _linear(ds, part: TrainingSet, rows, threads: int, seed: int):
    from sklearn.linear_model import LogisticRegression, Ridge
    from cotune.data.preprocess import Preprocessor
    model = Ridge(alpha=1.0) if ds.task == "regression" else LogisticRegression(max_iter=2000)
    # cotune's default encoding (median-imputed, standardized, one-hot) fitted on the same cleaned rows; not the
    # trial's own, which may hold embedding codes or a quantile map that a linear model should not get
    pre = Preprocessor().fit(ds, part.train_idx)
    features = _text_features(ds, part.train_idx, pre)
    model.fit(features(part.train_idx), part.train_labels)
    return type(model).__name__, _output(model, features(rows), ds)


def _text_features(ds, train_idx, pre):
    """rows -> the linear model's features: pre's encoding, where each text column's hashed counts give way to
    the classic TF-IDF of its word 1-2-grams and character 2-5-grams (within word boundaries, sublinear tf),
    fitted on the training rows' texts (a sparse matrix then)."""
    if not ds.text:
        return lambda rows: pre.transform_rows(ds, rows)
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion
    hashed = {f"{c['name']}#{i}" for c in pre.text_ if "hash" in c for i in range(c["hash"])}
    keep = np.array([n not in hashed for n in pre.feature_names_])
    vecs = {c: FeatureUnion([(part, TfidfVectorizer(sublinear_tf=True, **kw)) for part, kw in NGRAMS.items()])
            .fit(text_values(ds.X[c].iloc[train_idx])) for c in ds.text}
    return lambda rows: sp.hstack([sp.csr_matrix(pre.transform_rows(ds, rows)[:, keep])] +
                                  [v.transform(text_values(ds.X[c].iloc[rows])) for c, v in vecs.items()]).tocsr()


def _lightgbm(ds, part: TrainingSet, rows, threads: int, seed: int):
    import lightgbm
    cls = lightgbm.LGBMRegressor if ds.task == "regression" else lightgbm.LGBMClassifier
    model = cls(n_jobs=int(threads), verbose=-1, random_state=int(seed))
    train = ds.X.iloc[part.train_idx]
    categories = {c: sorted(set(_category_strings(train[c]))) for c in ds.categorical}
    model.fit(_raw(train, ds, categories), part.train_labels)
    return cls.__name__, _output(model, _raw(ds.X.iloc[rows], ds, categories), ds)


def _raw(df: pd.DataFrame, ds, categories: dict) -> pd.DataFrame:
    """The raw columns for LightGBM: numeric as float (non-finite -> NaN), categoricals as 'category' over the
    training rows' categories (others -> NaN). Columns are named f0, f1, ... (LightGBM refuses some characters)."""
    cols = {}
    for c in ds.numeric:
        s = df[c].astype(np.float64) if df[c].dtype.kind == "b" else pd.to_numeric(df[c], errors="coerce")
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        cols[c] = np.where(np.isfinite(v), v, np.nan)
    for c in ds.categorical:
        cols[c] = pd.Categorical(_category_strings(df[c]), categories=categories[c])
    for c in ds.text:  # hashed word 1-2-gram counts, as models without a table layout get them (cotune.data.text)
        cols.update({(c, j): v for j, v in enumerate(hashed_words(text_values(df[c])).T)})
    return pd.DataFrame({f"f{i}": v for i, v in enumerate(cols.values())})
