"""explain(run, data=None): which inputs a trained model relies on, written to <run>/explain/.

    res = cotune.explain("runs/x")                  # the run's own test rows
    res = cotune.explain("runs/x", "new.csv")       # the rows of a file (a table needs its target column)
    res.importances[:3]                             # tables: [{'column', 'mean', 'sd', 'drops'}, ...]
    res.attributions                                # sequences, images: (N, *in_shape) integrated gradients

Tables: permutation importance per original input column (cotune.explain.permutation), scored with the run's
metric (search.metric; 'auto' is the task's default, as the run was ranked) and the model's own decision (its
temperature and threshold). Sequences and images: integrated gradients of the predicted class's logit (a
regressor's output) with respect to the preprocessed input (cotune.explain.gradients); explain.json holds the mean
|attribution| per element, per position or pixel, and a few example rows. An ensemble's tables are scored through
its soft vote; its gradients are the mean over its members.

RUN is a run directory (`cotune train`) or a search directory (`cotune fit`: its final model, in final/). Without
DATA the rows are the test rows of the run's split, rebuilt from its config.json (a search's final model was
refitted on train + validation, so its test rows are still held out); with DATA, that file's rows (as `cotune
predict` reads them). At most max_rows of them are explained: a sample seeded by `seed`, which seeds the shuffles
too. Files: explain.json (everything) and, for tables, explain.csv (one row per column), built in a temporary
directory that replaces <run>/explain only when complete. Bad input is a CotuneError before anything is written.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cotune.errors import BundleError, ConfigError, CotuneError, DataError, fmt_choices, invalid, one_line
from cotune.track import read_json, replace_dir, write_csv, write_json

GRADIENT_MODALITIES = ("sequence", "image")
MAX_STEPS = 1024


@dataclass
class ExplainResult:
    path: Path                       # <run>/explain
    kind: str                        # 'permutation' or 'integrated_gradients'
    summary: str
    record: dict                     # explain.json's content
    rows: np.ndarray                 # the explained rows: dataset rows (the run's test rows) or rows of DATA
    importances: list | None = None  # tables: per column, largest first
    attributions: np.ndarray | None = None  # sequences, images: (N, *in_shape), the rows in `rows` order
    report: object = field(default=None)    # the rebuilt report.html (api.explain), when the run had one


def check_args(n_repeats, n_steps, baseline, max_rows, examples) -> None:
    def whole(v, lo, hi):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and lo <= v <= hi
    for name, v, lo, hi in (("--repeats", n_repeats, 1, 100), ("--steps", n_steps, 2, MAX_STEPS),
                            ("--rows", max_rows, 2, 10 ** 7), ("examples", examples, 0, 16)):
        if not whole(v, lo, hi):
            raise ConfigError(invalid(name, f"a whole number from {lo} to {hi}", v))
    from cotune.explain.gradients import BASELINES
    if baseline not in BASELINES:
        raise ConfigError(invalid("--baseline", f"one of {fmt_choices(BASELINES)}", baseline))


def locate(run) -> tuple[Path, Path]:
    """(the model's directory, the explain directory): a run's own explain/, a search's explain/ beside final/."""
    from cotune.predictor import resolve
    run = Path(run)
    if not run.is_dir():
        raise BundleError(f"Run directory {str(run)!r} not found; pass the --out directory of a finished run or search.")
    if (run / "fit.json").is_file() and not any((run / "final" / f).is_file() for f in ("model.json", "ensemble.json")):
        raise BundleError(f"The search in {str(run)!r} has no final model yet; finish it (cotune fit --resume "
                          f"--out {run}) before explaining it.")
    model_dir, compress_dir = resolve(run)
    return model_dir, compress_dir.parent / "explain"


def _config(model_dir: Path):
    from cotune.config import from_dict
    f = model_dir / "config.json"
    return from_dict(read_json(f)) if f.is_file() else None


def _codes(values, spec) -> np.ndarray:
    """Target values of new rows -> what the model's scores compare with: class codes, or floats (regression)."""
    values = pd.Series(values).reset_index(drop=True)
    if values.isna().any():
        raise DataError(f"{int(values.isna().sum())} row(s) have no {spec.target!r} value; drop them or fill them in.")
    if spec.task == "regression":
        out = pd.to_numeric(values, errors="coerce")
        if out.isna().any():
            raise DataError(f"Column {spec.target!r} must be numeric for this regression model; clean its cells.")
        return out.to_numpy(dtype=np.float64)

    def key(v):
        v = v.item() if isinstance(v, np.generic) else v
        return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
    index = {key(c): i for i, c in enumerate(spec.classes)}
    codes = np.array([index.get(key(v), -1) for v in values], dtype=np.int64)
    if (codes < 0).any():
        unknown = sorted({key(v) for v, c in zip(values, codes) if c < 0})[:5]
        raise DataError(f"Column {spec.target!r} holds labels the model was not trained on ({', '.join(unknown)}); "
                        f"it knows {', '.join(map(str, spec.classes[:10]))}.")
    return codes


def _table_rows(data, spec) -> tuple[pd.DataFrame, np.ndarray]:
    """(the model's columns, their target values) of a table: a DataFrame, a table file or a built-in table."""
    from cotune.data import sources
    if isinstance(data, (str, Path)):
        p = Path(data)
        if p.is_file():
            try:
                frame = sources.read_table(p)
            except CotuneError:
                raise
            except Exception as err:
                raise DataError(f"Could not read {str(data)!r} ({type(err).__name__}: {one_line(err)[:120]}); "
                                "check the file.") from None
            if frame is None:
                raise DataError(f"{str(data)!r} is not a table (CSV / Parquet); this model was trained on a table.")
        elif ":" in str(data):
            ds = sources.load(str(data), target=spec.target)
            frame = ds.X.assign(**{spec.target: np.asarray(ds.classes, dtype=object)[ds.y]
                                   if spec.task != "regression" else ds.y})
        else:
            raise DataError(f"Data {str(data)!r} not found; check the path.")
    elif isinstance(data, pd.DataFrame):
        frame = data
    else:
        raise DataError(f"This model takes a table (DataFrame, CSV or Parquet); got {type(data).__name__}.")
    frame = frame.rename(columns=str)
    missing = [c for c in spec.columns if c not in frame.columns]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"The data lacks {len(missing)} column(s) the model was trained on: "
                        f"{', '.join(repr(c) for c in missing[:5])}{more}; add them (empty cells are fine).")
    if spec.target not in frame.columns:
        raise DataError(f"The data has no {spec.target!r} column; permutation importance scores the model against "
                        "the labels, so add it.")
    return frame[list(spec.columns)].reset_index(drop=True), _codes(frame[spec.target], spec)


def _own_rows(model_dir: Path, cfg, spec):
    """(X, y, dataset rows, description) of the run's test rows, rebuilt from its config.json."""
    from cotune.data.split import split_indices
    from cotune.pipeline import load_data
    if cfg is None:
        raise BundleError(f"{str(model_dir)!r} has no config.json, so its test rows cannot be found again; pass DATA.")
    ds = load_data(cfg)
    d = cfg.data
    _, _, te = split_indices(ds, val=d.split.val, test=d.split.test, seed=d.split.seed)
    if not len(te):
        raise DataError(f"The run in {str(model_dir)!r} has no test rows (data.split.test=0); pass DATA to explain.")
    X = ds.X.iloc[te].reset_index(drop=True) if ds.modality == "tabular" else ds.X[te]
    return X, ds.y[te], te, f"the test rows of the run's split ({d.source})"


def _sample(n: int, max_rows: int, seed: int) -> np.ndarray:
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))


def _r(a) -> list:
    """An array as nested lists of floats with 5 significant digits (explain.json stays small)."""
    a = np.asarray(a, dtype=np.float64)
    return np.vectorize(lambda v: float(f"{v:.5g}"), otypes=[float])(a).tolist() if a.size else a.tolist()


def explain(run, data=None, *, n_repeats: int = 5, n_steps: int = 32, baseline: str = "zero", max_rows: int = 2000,
            seed: int = 0, examples: int = 4) -> ExplainResult:
    """See the module docstring."""
    from cotune import bundle, evaluate
    check_args(n_repeats, n_steps, baseline, max_rows, examples)
    model_dir, dest = locate(run)
    predictor = bundle.load(model_dir)  # an unfinished run: one BundleError
    spec = predictor.spec
    if spec.modality != "tabular" and spec.modality not in GRADIENT_MODALITIES:
        raise ConfigError(f"cotune explain has no method for {spec.modality!r} models; it explains tables "
                          "(permutation importance), sequences and images (integrated gradients).")
    if spec.modality in GRADIENT_MODALITIES:
        from cotune.explain.gradients import need_captum
        need_captum()
    cfg = _config(model_dir)
    metric = evaluate.primary_metric(spec.task, cfg.search.metric if cfg is not None else "auto")
    if data is None:
        X, y, source_rows, where = _own_rows(model_dir, cfg, spec)
    elif spec.modality == "tabular":
        X, y = _table_rows(data, spec)
        source_rows, where = np.arange(len(X)), f"the rows of {data if isinstance(data, (str, Path)) else 'the data'}"
    else:
        X, y = predictor._features(data), None
        source_rows, where = np.arange(len(X)), f"the rows of {data if isinstance(data, (str, Path)) else 'the data'}"
    if len(X) < 2:
        raise DataError(f"{where} hold {len(X)} row(s); explaining a model needs at least 2.")
    pick = _sample(len(X), max_rows, seed)
    X = X.iloc[pick].reset_index(drop=True) if isinstance(X, pd.DataFrame) else np.asarray(X)[pick]
    y, rows = (None if y is None else np.asarray(y)[pick]), np.asarray(source_rows)[pick]
    members = len(getattr(predictor, "members", None) or [predictor])
    record = {"model": str(model_dir), "modality": spec.modality, "task": spec.task, "data": where,
              "rows": int(len(X)), "rows_available": int(len(source_rows)), "seed": seed, "members": members}
    t0 = time.time()
    res = ExplainResult(path=dest, kind="", summary="", record=record, rows=rows)
    if spec.modality == "tabular":
        _tables(res, predictor, X, y, metric, n_repeats, seed)
    else:
        _gradients(res, predictor, X, y, n_steps, baseline, examples)
    record["seconds"] = round(time.time() - t0, 2)
    record["summary"] = res.summary
    _write(dest, record, res.importances)
    return res


def _tables(res: ExplainResult, predictor, X, y, metric, n_repeats: int, seed: int) -> None:
    from cotune.explain.permutation import permutation_importance, within_noise
    base, imps = permutation_importance(predictor.predict_output, X, y, metric, res.record["task"],
                                        n_repeats=n_repeats, seed=seed, threshold=predictor.threshold)
    quiet = sum(within_noise(r) for r in imps)
    change = "costs" if metric.maximize else "adds"
    top = ", ".join(f"{r['column']} ({r['mean']:+.4g})" for r in imps[:3])
    res.kind, res.importances = "permutation", imps
    res.summary = (f"shuffling {imps[0]['column']} {change} {imps[0]['mean']:.4g} {metric.name} (sd {imps[0]['sd']:.2g} "
                   f"over {n_repeats} shuffles); top: {top}; {quiet} of {len(imps)} column(s) within noise")
    res.record.update(kind="permutation", metric=metric.to_dict(), score=base, n_repeats=n_repeats,
                      importance=(f"{metric.name} on the rows as they are minus {metric.name} with the column shuffled"
                                  if metric.maximize else
                                  f"{metric.name} with the column shuffled minus {metric.name} on the rows as they are"),
                      ensemble="the ensemble's soft vote is scored" if res.record["members"] > 1 else None,
                      importances=[{**r, "within_noise": within_noise(r)} for r in imps])


def _gradients(res: ExplainResult, predictor, X, y, n_steps: int, baseline: str, examples: int) -> None:
    from cotune.evaluate import labels
    from cotune.explain.gradients import explain_predictor, per_position, pick_examples
    spec = predictor.spec
    output = predictor.predict_output(X)
    predicted = None if spec.task == "regression" else labels(output, predictor.threshold)
    attr, gap, diff, note = explain_predictor(predictor, X, predicted, n_steps=n_steps, baseline=baseline)
    pos = per_position(attr)  # (L,) or (H, W)
    flat = pos.reshape(-1)
    k = max(1, int(round(0.1 * flat.size)))
    share = float(np.sort(flat)[::-1][:k].sum() / max(flat.sum(), 1e-30))
    peak = np.unravel_index(int(flat.argmax()), pos.shape)
    where = f"position {peak[0]}" if pos.ndim == 1 else f"pixel (row {peak[0]}, column {peak[1]})"
    unit = "positions" if pos.ndim == 1 else "pixels"
    shown = []
    for i in pick_examples(predicted, len(X), examples):
        x = predictor.pre.transform(predictor._features(X[i:i + 1]))[0]
        a = attr[i]
        shown.append({"row": int(res.rows[i]),
                      "predicted": None if predicted is None else _plain(spec.classes[predicted[i]]),
                      "value": float(output[i]) if predicted is None else None,
                      "label": None if y is None else _plain(spec.classes[int(y[i])] if predicted is not None else y[i]),
                      "input": _r(x if pos.ndim == 1 else x.mean(0)),
                      "attribution": _r(a if pos.ndim == 1 else a.sum(0))})
    scale = np.abs(diff)
    rel = np.abs(gap) / np.maximum(scale, 1e-12)
    res.kind, res.attributions = "integrated_gradients", attr
    res.summary = (f"integrated gradients over {len(X)} rows ({n_steps} steps, {baseline} baseline): the top 10% of "
                   f"{unit} ({k} of {flat.size}) hold {share:.0%} of the mean |attribution|; the most at {where}")
    res.record.update(kind="integrated_gradients", n_steps=n_steps, baseline=baseline, in_shape=list(attr.shape[1:]),
                      target="the logit of the predicted class" if predicted is not None else "the model's output",
                      ensemble=None if res.record["members"] == 1 else note,
                      mean_abs=_r(np.abs(attr).mean(0)), per_position=_r(pos), top_share=share, top_k=k,
                      completeness={"median_abs_gap": float(np.median(np.abs(gap))),
                                    "median_abs_difference": float(np.median(scale)),
                                    "median_relative_gap": float(np.median(rel))},
                      examples=shown)


def _plain(v):
    v = v.item() if isinstance(v, np.generic) else v
    return v if isinstance(v, (str, int, float, bool, type(None))) else str(v)


def _write(dest: Path, record: dict, importances: list | None) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".explain-", dir=dest.parent))
    try:
        write_json(tmp / "explain.json", record)
        if importances is not None:
            write_csv(tmp / "explain.csv", [{"rank": i + 1, "column": r["column"], "importance_mean": r["mean"],
                                             "importance_sd": r["sd"]} for i, r in enumerate(importances)])
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
