"""Task metrics as plain JSON-serializable dicts (numpy + scikit-learn only; never torch).

Undefined values are None, never NaN. Bad inputs are upstream bugs, so they raise ValueError.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm

from cotune.errors import ConfigError, fmt_choices, invalid

TASKS = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class Metric:
    """A metric that ranks runs or that early stopping watches: its key and its direction.

    ``name`` is a key of a metrics.json part ('accuracy', 'rmse', ...) or 'loss' (the validation loss);
    a training history row holds it as ``history_key`` ('val_accuracy', 'val_loss')."""
    name: str
    maximize: bool

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"

    @property
    def history_key(self) -> str:
        return f"val_{self.name}"

    def better(self, a: float, b: float) -> bool:
        """Is ``a`` strictly better than ``b``?"""
        return a > b if self.maximize else a < b

    def to_dict(self) -> dict:
        return {"name": self.name, "maximize": self.maximize}


# every scalar key of evaluate()'s dicts, and whether higher is better
MAXIMIZE = {"accuracy": True, "balanced_accuracy": True, "precision_macro": True, "recall_macro": True,
            "f1_macro": True, "precision_weighted": True, "recall_weighted": True, "f1_weighted": True,
            "f1": True, "roc_auc": True, "log_loss": False, "brier": False, "ece": False, "rmse": False, "mae": False,
            "r2": True, "loss": False, "robust_accuracy": True}
# the metrics a user may rank by (search.metric), per task; f1 is the second class's, so binary only
RANKING = {"binary": ("accuracy", "balanced_accuracy", "f1_macro", "f1", "roc_auc", "log_loss", "robust_accuracy"),
           "multiclass": ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "log_loss", "robust_accuracy"),
           "regression": ("rmse", "mae", "r2")}
# metrics of predicted labels, not of probabilities: a binary model's decision threshold can be tuned for them
LABEL_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "f1")
# scored on the trained model itself (cotune.robust: under attack), after training: per epoch, accuracy stands in
MODEL_METRICS = ("robust_accuracy",)
THRESHOLD_METRICS = ("balanced_accuracy", "f1_macro", "f1")  # accuracy's best threshold is 0.5 for calibrated probabilities


def metric(name: str) -> Metric:
    """The Metric of a metrics.json key: metric('rmse') -> Metric('rmse', maximize=False)."""
    if name not in MAXIMIZE:
        raise ValueError(invalid("a metric name", f"one of {fmt_choices(MAXIMIZE)}", name))
    return Metric(name, MAXIMIZE[name])


def primary_metric(task: str, name: str = "auto") -> Metric:
    """The one source of the metric that ranks runs of ``task``: search trials, the ensemble's keep-or-reject,
    the scaling study's metric column and the report. ``name`` is search.metric: 'auto' is validation accuracy
    (classification) or RMSE (regression). A metric that does not fit the task is a ConfigError."""
    _check_task(task)
    if name == "auto":
        name = "rmse" if task == "regression" else "accuracy"
    if name not in RANKING[task]:
        fits = [t for t, names in RANKING.items() if name in names]
        why = f"it is for {' / '.join(fits)} targets" if fits else "it is not a metric cotune ranks by"
        raise ConfigError(f"search.metric={name!r} does not fit this {task} target ({why}); use one of "
                          f"{fmt_choices(('auto',) + RANKING[task])}.")
    return metric(name)


def monitored_metric(task: str, monitor: str = "metric", name: str = "auto") -> Metric:
    """What early stopping watches (train.monitor): the ranking metric (search.metric), or the validation loss."""
    if monitor == "loss":
        return metric("loss")
    m = primary_metric(task, name)
    return metric("accuracy") if m.name in MODEL_METRICS else m


def score(name: str, y_true, output, task: str, threshold: float | None = None) -> float | None:
    """One metric of evaluate()'s, cheaply (per validated epoch): ``output`` as evaluate() takes it;
    ``threshold``: a binary model's cut on P(second class) for the label metrics (default argmax)."""
    if task == "regression":
        y, pred = np.asarray(y_true, dtype=float), np.asarray(output, dtype=float).reshape(len(y_true), -1)[:, 0]
        if name == "rmse":
            return float(np.sqrt(np.mean((y - pred) ** 2)))
        if name == "mae":
            return float(np.mean(np.abs(y - pred)))
        if name == "r2":
            return _num(skm.r2_score(y, pred, force_finite=False)) if len(y) > 1 else None
        raise ValueError(invalid("a regression metric", "rmse, mae or r2", name))
    y, p = np.asarray(y_true).reshape(-1).astype(int), np.asarray(output, dtype=float)
    if name == "log_loss":
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-15, 1.0)).mean())
    if name == "brier":
        return float(((p - np.eye(p.shape[1])[y]) ** 2).sum(1).mean())
    if name == "roc_auc":
        return _roc_auc(y, p)
    pred = labels(p, threshold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "accuracy":
            return float(np.mean(pred == y))
        if name == "balanced_accuracy":
            return _num(skm.balanced_accuracy_score(y, pred))
        if name == "f1_macro":
            return _num(skm.f1_score(y, pred, average="macro", zero_division=0))
        if name == "f1":
            return _num(skm.f1_score(y, pred, pos_label=1, average="binary", zero_division=0))
    raise ValueError(invalid("a classification metric", fmt_choices(RANKING["binary"]), name))


def labels(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Predicted class codes: argmax, or for two classes P(second class) >= threshold when one is set."""
    if threshold is not None and probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(int)
    return probs.argmax(1)


def part_loss(part: dict) -> tuple[float, float | None]:
    """(loss, its standard error over the rows) of one metrics.json part: log loss for classification,
    mean squared error (rmse ** 2) for regression."""
    if "log_loss" in part:
        return part["log_loss"], part.get("log_loss_se")
    return part["rmse"] ** 2, part.get("mse_se")


def _check_task(task):
    if task not in TASKS:
        raise ValueError(invalid("'task'", f"one of {fmt_choices(TASKS)}", task))


def _num(x) -> float | None:
    """Plain float, or None for NaN/inf."""
    return float(x) if math.isfinite(float(x)) else None


def _plain(label):
    """A JSON-serializable class label (numpy scalars unwrapped, other objects as str)."""
    label = label.item() if isinstance(label, np.generic) else label
    return label if isinstance(label, (str, int, float, bool, type(None))) else str(label)


def _check_probs(y_true, probs):
    """Validate ``y_true`` (N,) int codes and ``probs`` (N, K); return them as arrays."""
    y, p = np.asarray(y_true).reshape(-1), np.asarray(probs, dtype=float)
    if not np.issubdtype(y.dtype, np.number):
        raise ValueError(invalid("'y_true'", "integer class codes", f"dtype {y.dtype}"))
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(invalid("'probs'", "a 2-D (N, K) array with K >= 2", f"shape {p.shape}"))
    if len(y) != len(p) or len(y) == 0:
        raise ValueError(f"'y_true' and 'probs' must be non-empty and equally long; got "
                         f"{len(y)} labels and {len(p)} probability rows.")
    if not np.all(np.isfinite(p)) or p.min() < 0 or not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise ValueError("'probs' must hold finite, non-negative rows summing to 1 (softmax).")
    if not np.all(np.mod(y, 1) == 0) or y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"'y_true' must be integer class codes in 0..{p.shape[1] - 1} (one per "
                         f"prob column); got values in [{y.min()}, {y.max()}].")
    return y.astype(int), p


def _bin_stats(y, p, n_bins):
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(invalid("'n_bins'", "an integer >= 1", n_bins))
    n_bins = int(n_bins)
    conf, correct = p.max(1), (p.argmax(1) == y).astype(float)
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)  # bins (lo, hi]
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, n_bins) / count
        mean_acc = np.bincount(idx, correct, n_bins) / count
    return count, mean_conf, mean_acc


def calibration_bins(y_true, probs, n_bins: int = 15) -> dict:
    """Reliability-diagram data over ``n_bins`` equal-width bins of the max probability.

    Parameters
    ----------
    y_true : array-like, shape (N,)
        Integer class codes 0..K-1.
    probs : array-like, shape (N, K)
        Class probabilities; rows sum to 1.
    n_bins : int
        Number of equal-width bins on [0, 1]; bin ``b`` covers ``(b/n_bins, (b+1)/n_bins]``.

    Returns
    -------
    dict
        Lists of length ``n_bins``: bin_lower, bin_upper, confidence (mean max prob), accuracy
        (fraction correct), count; empty bins have None confidence and accuracy.
    """
    count, conf, acc = _bin_stats(*_check_probs(y_true, probs), n_bins)
    edges = np.linspace(0.0, 1.0, len(count) + 1)
    return {"bin_lower": edges[:-1].tolist(), "bin_upper": edges[1:].tolist(),
            "confidence": [_num(c) for c in conf], "accuracy": [_num(a) for a in acc],
            "count": [int(c) for c in count]}


def ece(y_true, probs, n_bins: int = 15) -> float:
    """Expected calibration error: count-weighted mean of ``|accuracy - confidence|`` per bin.

    Parameters are as in :func:`calibration_bins`. Returns a float in [0, 1].
    """
    count, conf, acc = _bin_stats(*_check_probs(y_true, probs), n_bins)
    return float(np.sum(count * np.nan_to_num(np.abs(acc - conf))) / count.sum())


def _se(row_loss: np.ndarray) -> float | None:
    """Standard error of a mean over rows (std / sqrt(n)); None for fewer than 2 rows. A few rows that
    the model gets confidently wrong can carry most of a small log loss, and this says how much."""
    return float(row_loss.std(ddof=1) / np.sqrt(len(row_loss))) if len(row_loss) > 1 else None


def _roc_auc(y, p) -> float | None:
    """Binary: AUC of P(class 1). Multiclass: one-vs-rest macro over the classes present in y
    (= sklearn's multi_class='ovr' when all are). None if y holds fewer than two classes."""
    present = np.unique(y)
    if len(present) < 2:
        return None
    if p.shape[1] == 2:
        return _num(skm.roc_auc_score(y, p[:, 1]))
    return _num(np.mean([skm.roc_auc_score(y == k, p[:, k]) for k in present]))


def _classification(y, p, classes, threshold=None) -> dict:
    k = p.shape[1]
    if classes is not None and len(classes) != k:
        raise ValueError(invalid("'classes'", f"{k} labels (one per prob column)", len(classes)))
    pred = labels(p, threshold)
    out = {"n": int(len(y)), "accuracy": float(skm.accuracy_score(y, pred))}
    prfs = skm.precision_recall_fscore_support
    with warnings.catch_warnings():  # absent / never-predicted classes warn; handled below
        warnings.simplefilter("ignore")
        out["balanced_accuracy"] = _num(skm.balanced_accuracy_score(y, pred))
        for avg in ("macro", "weighted"):  # over labels seen in y or pred, as sklearn's default
            pr, rc, f1, _ = prfs(y, pred, average=avg, zero_division=0)
            out.update({f"precision_{avg}": _num(pr), f"recall_{avg}": _num(rc),
                        f"f1_{avg}": _num(f1)})
        if k == 2:  # the second class's F1 (search.metric f1)
            out["f1"] = _num(skm.f1_score(y, pred, pos_label=1, average="binary", zero_division=0))
        pr, rc, f1, sup = prfs(y, pred, labels=list(range(k)), zero_division=np.nan)
    row_loss = -np.log(np.clip(p[np.arange(len(y)), y], 1e-15, 1.0))
    out["log_loss"] = float(row_loss.mean())
    out["log_loss_se"] = _se(row_loss)  # how far another draw of as many rows could move log_loss
    out["brier"] = float(((p - np.eye(k)[y]) ** 2).sum(1).mean())  # multiclass Brier score: squared error of the probabilities
    out["roc_auc"] = _roc_auc(y, p)
    out["ece"] = ece(y, p)
    names = list(range(k)) if classes is None else list(classes)
    out["per_class"] = [{"class": _plain(c), "precision": _num(a), "recall": _num(r), "f1": _num(f),
                         "support": int(n)} for c, a, r, f, n in zip(names, pr, rc, f1, sup)]
    out["confusion_matrix"] = skm.confusion_matrix(y, pred, labels=list(range(k))).tolist()
    out["calibration"] = calibration_bins(y, p)
    return out


def _regression(y_true, output) -> dict:
    y, pred = np.asarray(y_true, dtype=float), np.asarray(output, dtype=float)
    pred = pred[:, 0] if pred.ndim == 2 and pred.shape[1] == 1 else pred
    if pred.ndim != 1 or y.ndim != 1 or len(y) != len(pred) or len(y) == 0:
        raise ValueError("regression 'y_true' (N,) and 'output' (N,) or (N, 1) must be non-empty "
                         f"and equally long; got shapes {y.shape} and {np.shape(output)}.")
    if not np.all(np.isfinite(y)) or not np.all(np.isfinite(pred)):
        raise ValueError("regression 'y_true' and 'output' must be finite (no NaN/inf).")
    resid = y - pred  # positive = under-prediction
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # r2 is undefined for n < 2 or constant y_true
        r2 = skm.r2_score(y, pred, force_finite=False) if len(y) > 1 else float("nan")
    qs = np.percentile(resid, [5, 25, 50, 75, 95])
    return {"n": int(len(y)), "rmse": float(np.sqrt(np.mean(resid ** 2))), "mse_se": _se(resid ** 2),
            "mae": float(np.mean(np.abs(resid))), "r2": _num(r2),
            "residual_quantiles": {f"p{q}": float(v) for q, v in zip((5, 25, 50, 75, 95), qs)}}


def evaluate(y_true, output, task: str, classes=None, threshold: float | None = None) -> dict:
    """Compute every metric for ``task`` as a JSON-serializable dict.

    Parameters
    ----------
    y_true : array-like, shape (N,)
        Classification: integer class codes 0..K-1. Regression: float targets.
    output : array-like, shape (N, K) or (N,) / (N, 1)
        Classification: class probabilities (rows sum to 1, K >= 2 even for binary).
        Regression: predictions.
    task : {'binary', 'multiclass', 'regression'}
    classes : sequence of length K, optional
        Display labels for ``per_class``; defaults to the codes 0..K-1.
    threshold : float, optional
        Binary only: predict the second class when its probability is at least this (a tuned decision
        threshold); the label metrics follow it, the probability metrics do not. Default: argmax.

    Returns
    -------
    dict
        Classification: n, accuracy, balanced_accuracy, precision/recall/f1 _macro and _weighted,
        f1 (binary: the second class's), brier, log_loss, log_loss_se (its standard error over the rows), roc_auc, ece, per_class,
        confusion_matrix (rows true, cols predicted), calibration. Regression: n, rmse, mse_se (the
        standard error of rmse**2 over the rows), mae, r2, residual_quantiles (p5..p95 of y - pred).
        Undefined values are None.
    """
    _check_task(task)
    if task == "regression":
        return _regression(y_true, output)
    y, p = _check_probs(y_true, output)
    if task == "binary" and p.shape[1] != 2:
        raise ValueError(invalid("binary 'output'", "shape (N, 2)", f"shape {p.shape}"))
    return _classification(y, p, classes, threshold)
