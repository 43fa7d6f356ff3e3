"""Class-imbalance handling for the training part (after cleaning), seeded and deterministic.

    res = balance_train(idx, y_train, "oversample", n_classes=ds.n_classes, seed=0)

`idx` are dataset rows and `y_train` their labels (aligned, e.g. a CleanResult's idx / y_train).
Nothing is edited in place. Methods:

================  ===============================================================================
method            result
================  ===============================================================================
none              unchanged
class_weights     weights: per-row loss weight = inverse class frequency, normalized to mean 1
oversample        every class randomly resampled (with replacement) up to the majority count;
                  idx then holds repeats
undersample       every class randomly subsampled (without replacement) to the minority count
smote             tables only: SMOTE (imblearn, k_neighbors = min(5, smallest class - 1)) on
                  X_train (the preprocessed float features of idx); synthetic rows come back as
                  X_extra / y_extra, idx is unchanged. One-hot columns of synthetic rows are
                  interpolated like any other feature; the `whole` columns (categorical codes,
                  token ids and their n-gram weights) are left out of the distances and copied
                  from the training row of the class nearest to the synthetic one: one of the
                  two it lies between, as a rule.
balanced_batches  sampling_weights: per-row probability weight (1 / class count, mean 1) so the
                  training loop draws class-balanced batches with replacement; idx unchanged
focal             loss='focal' for the caller to apply; idx unchanged
================  ===============================================================================

`pos` maps each row of the result back to its position in the input `idx` (so a caller holding
features for `idx` can take X[pos]). Classes absent from the training part are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cotune.errors import ConfigError, fmt_choices, invalid

METHODS = ("none", "class_weights", "oversample", "undersample", "smote", "balanced_batches", "focal")


@dataclass
class BalanceResult:
    idx: np.ndarray                           # int64 dataset rows, may repeat
    y: np.ndarray                             # labels aligned with idx
    pos: np.ndarray                           # int64 positions into the input idx, aligned with idx
    weights: np.ndarray | None = None         # float32 per-row loss weights
    sampling_weights: np.ndarray | None = None  # float32 per-row batch sampling weights
    X_extra: np.ndarray | None = None         # SMOTE: synthetic feature rows (float32)
    y_extra: np.ndarray | None = None         # SMOTE: their labels
    loss: str | None = None                   # 'focal' or None
    counts_before: list | None = None         # per-class row counts
    counts_after: list | None = None

    def to_dict(self) -> dict:
        return {"rows": int(len(self.idx)) + (0 if self.y_extra is None else int(len(self.y_extra))),
                "synthetic": 0 if self.y_extra is None else int(len(self.y_extra)),
                "counts_before": self.counts_before, "counts_after": self.counts_after, "loss": self.loss}


def _inverse_frequency(y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    w = 1.0 / counts[y].astype(np.float64)
    return (w / w.mean()).astype(np.float32)


def balance_train(idx, y_train, method: str, *, n_classes: int, seed: int = 0, X_train=None,
                  is_tabular: bool = False, whole=None) -> BalanceResult:
    """Balance the training rows as `method` asks; see the module docstring."""
    if method not in METHODS:
        raise ConfigError(invalid("'data.balance'", f"one of {fmt_choices(METHODS)}", method))
    idx = np.asarray(idx, dtype=np.int64).ravel()
    y = np.asarray(y_train).ravel()
    if len(y) != len(idx):
        raise ValueError(f"y_train has {len(y)} labels for {len(idx)} rows")
    pos = np.arange(len(idx), dtype=np.int64)
    if y.dtype.kind not in "iub" or n_classes < 2:
        if method != "none":
            raise ConfigError(f"data.balance={method!r} needs a classification target but the task is regression; "
                              "set data.balance=none.")
        return BalanceResult(idx=idx, y=y, pos=pos)
    y = y.astype(np.int64, copy=False)
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must be class codes in [0, {n_classes}), got range [{y.min()}, {y.max()}]")
    counts = np.bincount(y, minlength=n_classes)
    before = [int(c) for c in counts]
    res = BalanceResult(idx=idx, y=y, pos=pos, counts_before=before, counts_after=list(before))
    present = np.flatnonzero(counts)
    rng = np.random.default_rng(int(seed) % (2 ** 32))

    if method == "class_weights":
        res.weights = _inverse_frequency(y, counts)
    elif method == "balanced_batches":
        res.sampling_weights = _inverse_frequency(y, counts)
    elif method == "focal":
        res.loss = "focal"
    elif method in ("oversample", "undersample"):
        target = counts[present].max() if method == "oversample" else counts[present].min()
        chosen = []
        for k in present:  # one vectorized draw per class
            rows = np.flatnonzero(y == k)
            if method == "oversample":
                extra = rng.choice(rows, size=target - len(rows), replace=True)
                chosen.append(np.concatenate([rows, extra]))
            else:
                chosen.append(rng.choice(rows, size=target, replace=False))
        sel = np.sort(np.concatenate(chosen)) if chosen else pos[:0]
        res.pos, res.idx, res.y = sel, idx[sel], y[sel]
        res.counts_after = [int(c) for c in np.bincount(res.y, minlength=n_classes)]
    elif method == "smote":
        if not is_tabular:
            raise ConfigError("data.balance='smote' is for tables (it interpolates feature vectors); "
                              "use data.balance=oversample for images and sequences.")
        if X_train is None:
            raise ValueError("SMOTE needs X_train, the preprocessed features of the training rows")
        X = np.asarray(X_train, dtype=np.float32)
        if X.ndim != 2 or len(X) != len(idx):
            raise ValueError(f"X_train must be (n_rows, n_features) with {len(idx)} rows, got shape {X.shape}")
        res.X_extra, res.y_extra = X[:0], y[:0]
        if len(present) >= 2 and counts[present].min() < counts[present].max():
            smallest = int(counts[present].min())
            if smallest < 2:
                raise ConfigError(f"data.balance='smote' needs at least 2 training rows in every class, but one class has "
                                  f"{smallest}; use data.balance=oversample.")
            from imblearn.over_sampling import SMOTE
            keep = np.zeros(X.shape[1], dtype=bool) if whole is None else np.asarray(whole, dtype=bool)
            space = X[:, ~keep] if (~keep).any() else X  # all whole: the synthetic rows are copies of near rows
            X_res, y_res = SMOTE(k_neighbors=min(5, smallest - 1), random_state=int(seed) % (2 ** 32)).fit_resample(space, y)
            made, res.y_extra = np.asarray(X_res[len(X):], dtype=np.float32), np.asarray(y_res[len(X):], dtype=np.int64)
            res.X_extra = _with_whole_columns(X, y, space, made, res.y_extra, keep)
            res.counts_after = [int(c) for c in counts + np.bincount(res.y_extra, minlength=n_classes)]
    return res


def _with_whole_columns(X, y, space, made, y_made, keep) -> np.ndarray:
    """SMOTE's rows `made` (in `space`, X's columns outside `keep`, or all of them) as full rows of X: the `keep`
    columns copied from the nearest row of the same class in `space`."""
    out = np.zeros((len(made), X.shape[1]), dtype=np.float32)
    if (~keep).any():  # then `space` is X[:, ~keep]
        out[:, ~keep] = made
    if keep.any():
        from sklearn.neighbors import NearestNeighbors
        cols = np.flatnonzero(keep)
        for c in np.unique(y_made):
            rows, at = np.flatnonzero(y == c), np.flatnonzero(y_made == c)
            near = NearestNeighbors(n_neighbors=1).fit(space[rows]).kneighbors(made[at], return_distance=False)[:, 0]
            out[np.ix_(at, cols)] = X[np.ix_(rows[near], cols)]
    return out
