"""A data source split into its labeled rows and its unlabeled pool, for active learning (`cotune label-next`).

Which rows are unlabeled (the pool):

* tables (.csv/.tsv/.parquet): the rows whose target cell is empty (missing, or blank text);
* arrays (.npz with X and y): the rows whose label is -1 or NaN (so -1 cannot be a class label there);
* image folders: the images under the subfolder ``unlabeled/`` (sources.POOL_FOLDER), which is never a class.

`split_pool` writes the labeled rows where cotune trains on them like on any source (tables: a Parquet
file, arrays: an .npz) into a work folder the caller owns and removes; an image folder is its own labeled
source, since the image loader skips ``unlabeled/``. Pool rows are named in the user's terms: the 0-based
row of the table or index of the arrays, or the image's path relative to the folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cotune.data import sources
from cotune.errors import ConfigError, DataError


@dataclass(frozen=True)
class Pool:
    source: str       # the labeled rows as a cotune source: a file in the work folder, or the image folder
    X: object         # raw features of the pool rows: a DataFrame (tables, every column) or an array
    rows: list        # the pool rows' names (row numbers, or image paths relative to the folder), aligned with X
    n_labeled: int
    classes: tuple    # the distinct labels among the labeled rows
    kind: str         # 'table', 'arrays' or 'images'


def split_pool(source, *, target: str | None, workdir: str | Path, image_size: int = 32,
               image_mode: str = "rgb") -> Pool:
    """The labeled rows of `source` (written to `workdir` when they need a file of their own) and its pool."""
    name = str(source).strip()
    if name.lower().startswith("sklearn:") or name.lower() == "mnist1d":
        raise DataError(f"The built-in {name!r} labels every row, so it has no pool to rank; export it to a file "
                        "and leave the labels of the rows to rank empty (tables), -1 (arrays) or put them in unlabeled/.")
    path = Path(os.path.expanduser(name))
    if not path.exists():
        raise DataError(f"Data source {name!r} not found; check the path.")
    if path.is_dir():
        return _images(path, image_size, image_mode)
    if path.name.lower().endswith(".npz"):
        return _arrays(path, target, Path(workdir))
    df = sources.read_table(path)
    if df is None:
        raise DataError(f"Data source {name!r} has an unsupported type for label-next; use a .csv/.parquet table, "
                        "an .npz file with X and y, or an image folder with an unlabeled/ subfolder.")
    return _table(df, path, target, Path(workdir))


def _table(df: pd.DataFrame, path: Path, target, workdir: Path) -> Pool:
    df.columns = [str(c) for c in df.columns]
    if target is None:
        raise ConfigError(f"Which column holds the labels of {path.name!r}? Pass --labeled COLUMN (API: target=...); "
                          f"columns: {', '.join(list(df.columns)[:12])}.")
    if str(target) not in df.columns:
        raise DataError(f"Label column {target!r} not found in {path.name!r}; {sources._column_hint(str(target), list(df.columns))}.")
    col = df[str(target)]
    empty = col.isna().to_numpy()
    if col.dtype == object:
        empty |= col.astype(str).str.strip().eq("").to_numpy()
    labels = _as_labels(col[~empty])
    _check(path.name, f"whose {target!r} cell is empty", empty, labels)
    labeled = df[~empty].copy()
    labeled[str(target)] = labels.to_numpy()
    out = workdir / "labeled.parquet"
    try:
        labeled.to_parquet(out, index=False)  # keeps every column's type as the whole table read it
    except Exception:  # a column pyarrow cannot store (mixed Python objects): CSV, read back as cotune reads any
        out = workdir / "labeled.csv"
        labeled.to_csv(out, index=False)
    rows = np.flatnonzero(empty)
    return Pool(str(out), df.iloc[rows].reset_index(drop=True), [int(r) for r in rows], int((~empty).sum()),
                tuple(pd.unique(labels)), "table")


def _arrays(path: Path, target, workdir: Path) -> Pool:
    arrays = sources.read_arrays(path)
    x_key = "X" if "X" in arrays else ("x" if "x" in arrays else None)
    y_key = str(target) if target is not None else "y"
    if x_key is None or y_key not in arrays:
        raise DataError(f"The .npz file {str(path)!r} has no array {'X' if x_key is None else y_key!r} (it has "
                        f"{sorted(arrays)}); save it as np.savez(path, X=features, y=labels), y = -1 for unlabeled rows.")
    X, y = arrays[x_key], np.asarray(arrays[y_key])
    if y.ndim != 1 or len(X) != len(y):
        raise DataError(f"The .npz file {str(path)!r} has {len(X)} feature rows but labels of shape {y.shape}; "
                        "save one label per row (-1 for unlabeled rows).")
    if y.dtype.kind in "iuf":
        empty = (y == -1) | (np.isnan(y) if y.dtype.kind == "f" else False)
    elif y.dtype.kind in "US":
        empty = np.char.strip(y.astype(str)) == ""
    else:
        empty = np.zeros(len(y), dtype=bool)
    labels = _as_labels(pd.Series(y[~empty]))
    _check(path.name, f"whose {y_key!r} is -1 or NaN", empty, labels)
    keep = {x_key: X[~empty], y_key: labels.to_numpy()}
    if "split" in arrays and np.shape(arrays["split"]) == y.shape:
        keep["split"] = arrays["split"][~empty]
    out = workdir / "labeled.npz"
    np.savez(out, **keep)
    rows = np.flatnonzero(empty)
    return Pool(str(out), X[rows], [int(r) for r in rows], int((~empty).sum()), tuple(pd.unique(labels)), "arrays")


def _images(root: Path, image_size: int, image_mode: str) -> Pool:
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    pool_dir = next((p for p in subdirs if p.name.lower() == sources.POOL_FOLDER), None)
    where = f"{str(root / sources.POOL_FOLDER)!r}"
    if pool_dir is None or not _image_files(pool_dir):
        raise DataError(f"No unlabeled images in {str(root)!r}; put the images to rank in {where} "
                        "(the other subfolders are the classes).")
    counts = {d.name: len(_image_files(d)) for d in subdirs if d is not pool_dir}
    classes = tuple(c for c, k in counts.items() if k)
    _check(root.name, f"in {where}", np.ones(1, dtype=bool), classes)  # the pool is there (checked above)
    X, rel = sources.read_images(pool_dir, image_size, image_mode)
    return Pool(str(root), X, [f"{pool_dir.name}/{Path(r).as_posix()}" for r in rel], sum(counts.values()), classes,
                "images")


def _image_files(d: Path) -> list:
    return [f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in sources.IMAGE_EXTS
            and not any(part.startswith(".") for part in f.relative_to(d).parts)]


def _as_labels(s: pd.Series) -> pd.Series:
    """Labels as the labeled rows would hold them alone: whole floats (a column with empty cells reads as
    float) back to integers, so class 1 stays 1, not 1.0."""
    if s.dtype.kind == "f" and len(s) and np.all(np.isfinite(s)) and np.all(s % 1 == 0):
        return s.astype(np.int64)
    return s


def _check(name: str, what: str, empty: np.ndarray, labels) -> None:
    """A pool to rank, and labeled rows of at least two classes to train on."""
    if not empty.any():
        raise DataError(f"{name!r} has no unlabeled rows (rows {what}); leave empty the labels of the rows to rank, "
                        "or there is nothing to label next.")
    classes = pd.unique(np.asarray(labels))
    if len(classes) < 2:
        seen = f" (only {classes[0]!r})" if len(classes) else ""
        raise DataError(f"{name!r} has {len(classes)} labeled class(es){seen}; label-next trains a classifier on the "
                        "labeled rows first: label rows of at least two classes.")
