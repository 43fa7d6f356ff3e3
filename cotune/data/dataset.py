"""One immutable Dataset: raw features, encoded targets and what was inferred about them.

Everything downstream (split, clean, balance, preprocess, batches) works with index arrays over a
Dataset and never edits it. Sources build one through `make_dataset`, which infers the task,
column types and modality (each can be overridden) and rejects data that cannot be trained on.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cotune.errors import DataError, fmt_choices, invalid

TASKS = ("binary", "multiclass", "regression")
MODALITIES = ("tabular", "image", "sequence")
MAX_CLASSES = 200  # more distinct values than this in a numeric target means regression


@dataclass(frozen=True, eq=False)
class Dataset:
    X: pd.DataFrame | np.ndarray   # tabular: DataFrame of raw columns; image: (N, C, H, W); sequence: (N, C, L)
    y: np.ndarray                  # (N,) int64 class codes 0..K-1, or float32 values for regression
    task: str                      # 'binary' | 'multiclass' | 'regression'
    modality: str                  # 'tabular' | 'image' | 'sequence'
    name: str = "data"
    target: str = "y"
    classes: tuple = ()            # original class labels, index = code; () for regression
    numeric: tuple = ()            # tabular numeric column names
    categorical: tuple = ()        # tabular categorical column names
    text: tuple = ()               # tabular free-text column names (tokenized by the preprocessing)
    split: np.ndarray | None = None  # optional predefined per-row split: 'train' / 'val' / 'test'
    meta: dict = field(default_factory=dict)  # source details (generator args, image size, ...)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def feature_shape(self) -> tuple:
        """Shape of one raw sample (before one-hot); tabular gives (n_columns,)."""
        return (self.X.shape[1],) if isinstance(self.X, pd.DataFrame) else tuple(self.X.shape[1:])


def infer_task(y: np.ndarray, override: str = "auto") -> str:
    if override != "auto":
        if override not in TASKS:
            raise DataError(invalid("'data.task'", f"one of {fmt_choices(('auto',) + TASKS)}", override))
        return override
    s = pd.Series(y)
    n_unique = s.nunique(dropna=True)
    if s.dtype.kind in "fc" and not np.allclose(s.dropna() % 1, 0):
        return "regression"
    if s.dtype.kind in "iufcb" and n_unique > min(MAX_CLASSES, max(20, len(s) // 20)):
        return "regression"
    return "binary" if n_unique <= 2 else "multiclass"


def encode_target(y, task: str, target: str) -> tuple[np.ndarray, tuple]:
    """Return (encoded y, classes). Classification codes are 0..K-1 in sorted label order."""
    s = pd.Series(np.asarray(y))
    if s.isna().any():
        n = int(s.isna().sum())
        raise DataError(f"The target column {target!r} has {n} missing value(s); drop those rows or fill them before training.")
    if task == "regression":
        try:
            return s.astype("float64").to_numpy(np.float32), ()
        except (TypeError, ValueError):
            raise DataError(f"The target column {target!r} is not numeric but the task is 'regression'; "
                            "set data.task to 'binary' or 'multiclass', or pick a numeric target.") from None
    classes = np.unique(s.to_numpy())
    if len(classes) < 2:
        raise DataError(f"The target column {target!r} has a single class ({classes[0]!r}); a classifier needs "
                        "at least two classes: check the target name, or use data.task=regression for a numeric target.")
    if task == "binary" and len(classes) > 2:
        raise DataError(invalid("'data.task'", "'multiclass' for a target with more than two classes",
                                task, f"the target {target!r} has {len(classes)} classes"))
    codes = np.searchsorted(classes, s.to_numpy()).astype(np.int64)
    return codes, tuple(c.item() if hasattr(c, "item") else c for c in classes)


def make_dataset(X, y, *, task: str = "auto", modality: str = "auto", name: str = "data", target: str = "y",
                 categorical=None, text=None, split=None, meta=None) -> Dataset:
    """Validate raw features and targets and infer what is not given.

    X: a DataFrame (tabular) or an array of shape (N, F) (tabular), (N, L) or (N, C, L)
    (sequence), (N, C, H, W) (image). y: (N,) labels or values.
    """
    y = np.asarray(y)
    if len(y) == 0:
        raise DataError(f"The data source {name!r} has no rows; point data.source at a file with data in it.")
    if len(X) != len(y):
        raise DataError(f"The features of {name!r} have {len(X)} rows but the target has {len(y)}; they must match.")
    if y.ndim != 1:
        raise DataError(invalid("The target", "one value per row (a 1-D array)", f"shape {y.shape}"))
    task = infer_task(y, task)
    y_enc, classes = encode_target(y, task, target)
    if modality not in ("auto",) + MODALITIES:
        raise DataError(invalid("'data.modality'", f"one of {fmt_choices(('auto',) + MODALITIES)}", modality))
    numeric: tuple = ()
    cats: tuple = ()
    texts: tuple = ()
    if isinstance(X, pd.DataFrame):
        if modality not in ("auto", "tabular"):
            raise DataError(f"A table can only be used as modality 'tabular', not {modality!r}; "
                            "use an .npz array for sequences or an image folder for images.")
        if X.shape[1] == 0:
            raise DataError(f"The data source {name!r} has no feature columns besides the target {target!r}.")
        X = X.reset_index(drop=True)
        X.columns = [str(c) for c in X.columns]
        numeric, cats, texts = infer_column_types(X, categorical, text)
        modality = "tabular"
    else:
        X = np.asarray(X)
        if X.dtype.kind not in "biuf":
            raise DataError(f"The feature array of {name!r} has dtype {X.dtype}; arrays must be numeric.")
        X = X.astype(np.float32, copy=False)
        if modality == "auto":
            modality = {2: "tabular", 3: "sequence", 4: "image"}.get(X.ndim)
            if modality is None:
                raise DataError(invalid("The feature array", "2-D (N, F), 3-D (N, C, L) or 4-D (N, C, H, W)", f"shape {X.shape}"))
        if modality == "sequence" and X.ndim == 2:
            X = X[:, None, :]  # (N, L) -> (N, 1, L)
        expected = {"tabular": 2, "sequence": 3, "image": 4}[modality]
        if X.ndim != expected:
            raise DataError(invalid(f"A {modality} feature array", f"{expected}-D", f"shape {X.shape}"))
        if not np.isfinite(X).all():
            raise DataError(f"The feature array of {name!r} holds NaN or infinite values; fill or drop them first.")
        if modality == "tabular":
            X = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
            numeric = tuple(X.columns)
    if split is not None:
        split = np.asarray(split).astype(str)
        if split.shape != y.shape:
            raise DataError(invalid("The split column", f"one 'train'/'val'/'test' entry per row ({len(y)})", f"shape {split.shape}"))
        bad = set(np.unique(split)) - {"train", "val", "test"}
        if bad:
            raise DataError(invalid("The split column", "made of 'train', 'val' and 'test'", [str(b) for b in sorted(bad)[:3]]))
    return Dataset(X=X, y=y_enc, task=task, modality=modality, name=name, target=target, classes=classes,
                   numeric=numeric, categorical=cats, text=texts, split=split, meta=dict(meta or {}))


def infer_column_types(df: pd.DataFrame, categorical=None, text=None) -> tuple[tuple, tuple, tuple]:
    """(numeric, categorical, text) column names. Numeric columns stay numeric; bool / category columns and
    those named in `categorical` are categorical; the rest of the string columns are text when named in
    `text`, or (text=None) when they look like free text (is_text), else categorical.

    A string column whose non-missing values all parse as numbers is numeric. A column that is
    mostly numbers with some junk is an error (it is almost always a data entry problem).
    """
    forced = set(categorical or ())
    named = None if text is None else [str(c) for c in text]
    for key, cols in (("data.categorical", forced), ("data.text", set(named or ()))):
        unknown = cols - set(df.columns)
        if unknown:
            raise DataError(invalid(f"'{key}'", "a list of existing column names", sorted(unknown)[0],
                                    f"columns are {list(df.columns)[:10]}"))
    both = forced & set(named or ())
    if both:
        raise DataError(f"Column {sorted(both)[0]!r} is named in both data.categorical and data.text; keep it in one.")
    numeric, cats, texts = [], [], []
    for col in df.columns:
        s = df[col]
        if named is not None and col in named:
            if not s.astype("string").str.strip().fillna("").astype(bool).any():
                raise DataError(f"Text column {col!r} is empty in every row; drop it (data.drop) or fill it in.")
            if s.dtype.kind in "biuf" or pd.to_numeric(s.dropna(), errors="coerce").notna().all():
                raise DataError(f"Column {col!r} is named in data.text but holds numbers, not text; "
                                "remove it from data.text (numbers are scaled as numeric features).")
            texts.append(col)
        elif col in forced or s.dtype.kind == "b" or isinstance(s.dtype, pd.CategoricalDtype):
            cats.append(col)
        elif s.dtype.kind in "iuf":
            numeric.append(col)
        else:
            parsed = pd.to_numeric(s, errors="coerce")
            present = s.notna()
            bad = present & parsed.isna()
            if present.sum() and not bad.any():
                numeric.append(col)
            elif present.sum() and bad.sum() <= 0.05 * present.sum():
                example = s[bad].iloc[0]
                raise DataError(f"Column {col!r} is numeric except for {int(bad.sum())} value(s) such as {example!r}; "
                                f"clean those cells, or list {col!r} in data.categorical to treat it as a category.")
            elif named is None and is_text(s):
                texts.append(col)
            else:
                cats.append(col)
    return tuple(numeric), tuple(cats), tuple(texts)


TEXT_MIN_WORDS = 3      # a string column is free text when its values average at least this many words
TEXT_MIN_DISTINCT = 0.5  # ... and more than this share of its non-empty values are distinct


def is_text(s: pd.Series) -> bool:
    """Whether a string column looks like free text (reviews, titles, notes) rather than a category: its
    non-empty values average >= TEXT_MIN_WORDS words and more than TEXT_MIN_DISTINCT of them are distinct."""
    v = s.dropna().astype(str).str.strip()
    v = v[v != ""]
    if len(v) == 0:
        return False
    words = v.str.split().str.len().mean()
    return bool(words >= TEXT_MIN_WORDS and v.nunique() > TEXT_MIN_DISTINCT * len(v))


def describe(ds: Dataset) -> dict:
    """A JSON-serializable summary: rows, features, task, modality, class count and per-class counts (and how
    a CSV file was read)."""
    shape = [int(s) for s in ds.feature_shape]
    out = {
        "name": ds.name,
        "rows": len(ds),
        "features": int(np.prod(shape)) if shape else 0,
        "feature_shape": shape,
        "numeric": len(ds.numeric),
        "categorical": len(ds.categorical),
        "text": len(ds.text),
        "task": ds.task,
        "modality": ds.modality,
        "target": ds.target,
        "n_classes": ds.n_classes,
        "class_counts": {},
        "split": None,
    }
    if ds.task != "regression":
        counts = np.bincount(ds.y, minlength=ds.n_classes)
        out["class_counts"] = {str(c): int(n) for c, n in zip(ds.classes, counts)}
    else:
        y = ds.y.astype(np.float64)
        out["target_stats"] = {"mean": float(y.mean()), "std": float(y.std()), "min": float(y.min()), "max": float(y.max())}
    if ds.split is not None:
        names, counts = np.unique(ds.split, return_counts=True)
        out["split"] = {str(k): int(v) for k, v in zip(names, counts)}
    if "dialect" in ds.meta:  # how a CSV file was read: separator, decimal mark, byte-order mark
        out["dialect"] = dict(ds.meta["dialect"])
    return out
