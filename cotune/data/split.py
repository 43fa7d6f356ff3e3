"""Seeded train / val / test index splits over a Dataset, seeded stratified subsampling and k-fold parts.

All functions return sorted int64 index arrays and never touch the Dataset itself.
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from cotune.data.dataset import Dataset
from cotune.errors import ConfigError, DataError, invalid

MAX_HELD_OUT = 0.9  # val + test must stay below this so that training keeps a real share of the rows


def _fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < MAX_HELD_OUT:
        raise ConfigError(invalid(f"'data.{name}'", f"a fraction from 0 to below {MAX_HELD_OUT}", value,
                                  f"e.g. --set data.{name}=0.15"))
    return float(value)


def split_indices(ds: Dataset, *, val: float = 0.15, test: float = 0.15, seed: int = 0,
                  stratify: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (train_idx, val_idx, test_idx): sorted int64 arrays that cover every row exactly once.

    With a predefined split (``ds.split``) rows marked 'val' / 'test' go there. If no row is marked
    'val', a `val` fraction of the train-marked rows is carved out (stratified, seeded); likewise
    for 'test' when no row is marked 'test' (and test > 0). Otherwise the split is seeded and, for
    classification, stratified; rows of classes with fewer than 2 members always go to train.
    """
    val, test = _fraction("val", val), _fraction("test", test)
    if val + test >= MAX_HELD_OUT:
        raise ConfigError(invalid("'data.val' + 'data.test'", f"below {MAX_HELD_OUT}", round(val + test, 6),
                                  "lower data.val or data.test, e.g. 0.15 each"))
    n = len(ds)
    rng_seed = int(seed) % (2 ** 32)
    y = ds.y if (stratify and ds.task != "regression") else None
    all_idx = np.arange(n, dtype=np.int64)
    if ds.split is not None:
        split = np.asarray(ds.split).astype(str)
        if split.shape != (n,):
            raise DataError(invalid(f"The predefined split of {ds.name!r}", f"one entry per row ({n})", f"{split.shape[0]} entries"))
        train_idx, val_idx, test_idx = (all_idx[split == s] for s in ("train", "val", "test"))
        if len(train_idx) == 0:
            raise DataError(f"The predefined split of {ds.name!r} marks no row as 'train'; mark some rows 'train'.")
        if len(test_idx) == 0 and test > 0:
            train_idx, test_idx = _carve(train_idx, test, y, rng_seed + 1, ds.name)
        if len(val_idx) == 0 and val > 0:
            train_idx, val_idx = _carve(train_idx, val, y, rng_seed, ds.name)
    else:
        train_idx, test_idx = _carve(all_idx, test, y, rng_seed + 1, ds.name)
        val_share = val / (1.0 - test) if test < 1 else 0.0
        train_idx, val_idx = _carve(train_idx, val_share, y, rng_seed, ds.name)
    return tuple(np.sort(np.asarray(a, dtype=np.int64)) for a in (train_idx, val_idx, test_idx))


def _carve(idx: np.ndarray, fraction: float, y, seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Split `idx` into (kept, carved) with about `fraction` of the rows carved (at least one if > 0)."""
    idx = np.asarray(idx, dtype=np.int64)
    if fraction <= 0 or len(idx) == 0:
        return idx, idx[:0]
    n_out = int(np.ceil(fraction * len(idx)))
    if n_out >= len(idx):
        raise DataError(f"{name!r} has too few rows ({len(idx)}) to hold out a {fraction:.0%} share and keep rows "
                        "for training; add rows or lower data.val / data.test.")
    if y is None:
        keep, out = train_test_split(idx, test_size=n_out, random_state=seed, shuffle=True)
        return keep, out
    labels = y[idx]
    classes, counts = np.unique(labels, return_counts=True)
    tiny = np.isin(labels, classes[counts < 2])  # a single-member class cannot be stratified: keep it in train
    forced, rest = idx[tiny], idx[~tiny]
    n_out = min(n_out, len(rest) - 1)
    if n_out <= 0:
        return idx, idx[:0]
    try:
        keep, out = train_test_split(rest, test_size=n_out, random_state=seed, shuffle=True, stratify=y[rest])
    except ValueError:  # too few rows per class for the requested share: fall back to a plain shuffle
        keep, out = train_test_split(rest, test_size=n_out, random_state=seed, shuffle=True)
    return np.concatenate([keep, forced]), out


def subsample(idx, fraction: float, seed: int = 0, y=None) -> np.ndarray:
    """A seeded subset of `idx` with round(fraction * len(idx)) rows (at least 1), sorted int64.

    `y` is the label array of the whole dataset (indexed as ``y[idx]``); when given and of integer
    (class code) dtype, the subset keeps each class's share (every class keeps at least one row
    when the subset is large enough).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 < float(fraction) <= 1.0:
        raise ConfigError(invalid("The subsample fraction", "a number in (0, 1]", fraction, "e.g. 0.5"))
    idx = np.asarray(idx, dtype=np.int64).ravel()
    if float(fraction) == 1.0 or len(idx) == 0:
        return np.sort(idx)
    n_keep = max(1, int(round(float(fraction) * len(idx))))
    rng = np.random.default_rng(int(seed) % (2 ** 32))
    if y is None or np.asarray(y).dtype.kind not in "iub":
        return np.sort(rng.choice(idx, size=n_keep, replace=False))
    labels = np.asarray(y)[idx]
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = _allocate(counts, n_keep, rng)
    chosen = [rng.choice(idx[inverse == k], size=q, replace=False) for k, q in enumerate(quota) if q > 0]
    return np.sort(np.concatenate(chosen).astype(np.int64))


def _allocate(counts: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Integer per-class quotas summing to `total`, proportional to `counts` (largest remainder),
    with at least one per class when total >= number of classes."""
    exact = counts * (total / counts.sum())
    quota = np.floor(exact).astype(np.int64)
    if total >= len(counts):
        quota = np.maximum(quota, 1)
    quota = np.minimum(quota, counts)
    remainder = exact - np.floor(exact)
    tie = rng.random(len(counts))
    while quota.sum() < total:  # hand out the rest by largest remainder
        open_ = quota < counts
        k = np.flatnonzero(open_)[np.lexsort((tie[open_], -remainder[open_]))[0]]
        quota[k] += 1
        remainder[k] = -1.0
    while quota.sum() > total:  # the at-least-one rule overshot: take from the largest quotas
        k = int(np.argmax(quota))
        quota[k] -= 1
    return quota


def kfold(idx, folds: int, seed: int = 0, y=None) -> list[np.ndarray]:
    """`idx` cut into `folds` disjoint held-out parts (sorted int64) that cover it exactly once; seeded, and
    stratified by `y` (the whole dataset's labels, indexed as ``y[idx]``) when given: a class with fewer rows
    than folds spreads over as many folds as it has rows."""
    idx = np.asarray(idx, dtype=np.int64).ravel()
    if isinstance(folds, bool) or not isinstance(folds, numbers.Integral) or not 2 <= folds <= len(idx):
        raise ConfigError(invalid("The number of folds", f"an integer from 2 to the rows ({len(idx)})", folds,
                                  "e.g. --set search.reeval_folds=3"))
    rng_seed = int(seed) % (2 ** 32)
    splits = None
    if y is not None:
        with warnings.catch_warnings():  # "the least populated class has only n members": spread as it can
            warnings.simplefilter("ignore", UserWarning)
            try:
                splits = list(StratifiedKFold(folds, shuffle=True, random_state=rng_seed).split(idx, np.asarray(y)[idx]))
            except ValueError:  # every class has fewer rows than folds: no stratification to keep
                splits = None
    if splits is None:
        splits = KFold(folds, shuffle=True, random_state=rng_seed).split(idx)
    return [np.sort(idx[held]) for _, held in splits]
