"""Post-hoc decisions on a classifier's probabilities: a temperature and a binary decision threshold.

    T = fit_temperature(probs_val, y_val)                 # one scalar, by validation log loss
    cal = temperature_check(probs_val, y_val, seed=0)     # is it worth keeping? (cross-fitted on val)
    thr = threshold_check(probs_val, y_val, "f1_macro")   # the cut on P(second class) by expected macro-F1

Temperature scaling (Guo et al. 2017) divides the log-probabilities by T and renormalizes: the
ranking of the classes, so accuracy, is unchanged, only the confidence moves. It is applied to an
ensemble's averaged probabilities, not to each member's. numpy + scipy only.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from cotune.evaluate import THRESHOLD_METRICS, score

LOG_T = (-4.0, 4.0)  # T in [e^-4, e^4]
N_THRESHOLDS = 100


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): probabilities sharpened (T < 1) or softened (T > 1); T = 1 returns them as they are."""
    p = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0:
        return p
    z = np.log(np.clip(p, 1e-15, 1.0)) / float(temperature)
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _nll(probs: np.ndarray, y: np.ndarray, temperature: float) -> float:
    return float(score("log_loss", y, apply_temperature(probs, temperature), "multiclass"))


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The T in [e^-4, e^4] that minimizes the log loss of softmax(log p / T) on (probs, y)."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(y).astype(int)
    res = minimize_scalar(lambda lt: _nll(p, y, float(np.exp(lt))), bounds=LOG_T, method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(res.x))


def temperature_check(probs: np.ndarray, y: np.ndarray, seed: int = 0) -> dict:
    """Fit T on the validation rows and say whether to keep it.

    One scalar fitted on rows always lowers those rows' log loss, so the check is cross-fitted: T fitted on
    one half (stratified by class) scores the other half, and both ways; T is kept only when that
    held-out log loss is lower than without it. The T kept is then fitted on all the rows."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(y).astype(int)
    fold = _halves(y, seed)
    crossed = np.empty_like(p)
    for f in (0, 1):
        fit_rows, other = fold == f, fold != f
        if fit_rows.sum() == 0 or other.sum() == 0:
            crossed[other] = p[other]
            continue
        crossed[other] = apply_temperature(p[other], fit_temperature(p[fit_rows], y[fit_rows]))
    before, after = _nll(p, y, 1.0), float(score("log_loss", y, crossed, "multiclass"))
    keep = after < before
    t = fit_temperature(p, y) if keep else 1.0
    return {"temperature": t, "kept": bool(keep), "val_log_loss": before, "val_log_loss_cross_fitted": after,
            "rows": int(len(y))}


def tune_threshold(probs: np.ndarray, y: np.ndarray, metric: str) -> tuple[float, float, float]:
    """(threshold, metric at it, metric at argmax) for a binary model under a label metric: among up to 100
    quantiles of P(second class) and 0.5, the cut nearest 0.5 whose score is within one row's worth of the
    best (1 / rows: a closer cut to 0.5 is preferred to an edge that a single row decides)."""
    if metric not in THRESHOLD_METRICS:
        raise ValueError(f"a decision threshold is tuned only for {THRESHOLD_METRICS}, not {metric!r}")
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(y).astype(int)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError("a decision threshold needs binary (N, 2) probabilities")
    cands = np.unique(np.concatenate([np.quantile(p[:, 1], np.linspace(0.0, 1.0, N_THRESHOLDS)), [0.5]]))
    scores = np.array([score(metric, y, p, "binary", threshold=float(t)) or 0.0 for t in cands])
    near = np.flatnonzero(scores >= scores.max() - 1.0 / max(1, len(y)))
    i = near[np.argmin(np.abs(cands[near] - 0.5))]
    return float(cands[i]), float(scores[i]), float(score(metric, y, p, "binary") or 0.0)


def expected_metric(probs: np.ndarray, metric: str, threshold: float) -> float:
    """The label metric a cut at `threshold` is expected to score if the probabilities are calibrated: the
    confusion counts as sums of probabilities (a row predicted positive is a true positive with probability
    P(second class)), so no label is read and no single row decides it."""
    p1 = np.asarray(probs, dtype=np.float64)[:, 1]
    pos = p1 >= threshold
    tp, fp = p1[pos].sum(), (1 - p1[pos]).sum()
    fn, tn = p1[~pos].sum(), (1 - p1[~pos]).sum()
    f1_pos = 2 * tp / max(2 * tp + fp + fn, 1e-12)
    f1_neg = 2 * tn / max(2 * tn + fn + fp, 1e-12)
    if metric == "f1":
        return float(f1_pos)
    if metric == "f1_macro":
        return float((f1_pos + f1_neg) / 2)
    if metric == "balanced_accuracy":
        return float((tp / max(tp + fn, 1e-12) + tn / max(tn + fp, 1e-12)) / 2)
    raise ValueError(f"a decision threshold is tuned only for {THRESHOLD_METRICS}, not {metric!r}")


def threshold_check(probs: np.ndarray, y: np.ndarray, metric: str, seed: int = 0) -> dict:
    """A decision threshold for a binary model under a label metric, from calibrated validation probabilities.

    The cut is the one that maximizes the metric's expected value under the probabilities (`expected_metric`,
    over up to 100 quantiles of P(second class) and 0.5): tuning a cut on the labels of a few hundred rows,
    a few dozen of them in the minority, follows those rows more than the task. It is kept when the labels do
    not contradict it: its validation metric is at least argmax's. The label-tuned cut and its cross-fitted
    score (tuned on one stratified half, scored on the other, both ways) are reported beside it."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(y).astype(int)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError("a decision threshold needs binary (N, 2) probabilities")
    cands = np.unique(np.concatenate([np.quantile(p[:, 1], np.linspace(0.0, 1.0, N_THRESHOLDS)), [0.5]]))
    expected = np.array([expected_metric(p, metric, float(t)) for t in cands])
    t = float(cands[int(np.argmax(expected))])
    at, base = score(metric, y, p, "binary", threshold=t) or 0.0, score(metric, y, p, "binary") or 0.0
    fold = _halves(y, seed)
    crossed = np.empty(len(y), dtype=int)
    for f in (0, 1):
        fit_rows, other = fold == f, fold != f
        cut = tune_threshold(p[fit_rows], y[fit_rows], metric)[0] if fit_rows.sum() and len(np.unique(y[fit_rows])) > 1 else 0.5
        crossed[other] = (p[other, 1] >= cut).astype(int)
    cross = score(metric, y, np.eye(2)[crossed], "binary") or 0.0  # the crossed labels as one-hot 'probabilities'
    keep = t != 0.5 and at >= base
    return {"threshold": t if keep else None, "kept": bool(keep), "tuned": t, "metric": metric,
            "expected_at_threshold": float(expected.max()), "expected_at_argmax": expected_metric(p, metric, 0.5),
            "val_at_threshold": float(at), "val_at_argmax": float(base), "label_tuned": tune_threshold(p, y, metric)[0],
            "val_cross_fitted": float(cross), "rows": int(len(y))}


def _halves(y: np.ndarray, seed: int) -> np.ndarray:
    """0 / 1 per row: two halves stratified by class."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), dtype=int)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx[::2]] = 1
    return fold
