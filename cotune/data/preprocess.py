"""Feature preprocessing fitted on the training rows only, saved as plain JSON (never pickle).

Tabular data
    numeric columns: impute the train median (0 for a column that is all missing in train; +-inf
    counts as missing), then scale by `numeric` (cotune.data.scaling): 'standard' = the train
    mean / std (std 0 -> 1), 'robust' = median / IQR then a smooth clip into (-3, 3), 'quantile'
    = to a standard normal through the train quantiles.
    categorical columns: missing -> '__missing__', values compared as strings (an integral float
    such as 3.0 reads as '3'), one-hot over the categories seen in train. At most
    `max_categories` (50) categories per column are kept: the most frequent ones; when train has
    more, the rest share one '__other__' column. At transform time a value outside the kept
    categories gives all zeros for that column, or the '__other__' column when the column has one
    (such a value is rarer than every kept category).
    embedded columns (only with `embed=True`, for models that read the layout): a column with more
    than `embed_above` kept categories is one integer-code column instead, codes 0..c-1 as floats:
    the kept categories in order, then one slot (the '__other__' one when the column has it) for
    every value outside them, so c = kept categories + 1 (without '__other__').
    text columns (cotune.data.text): with `embed=True`, a tokenizer (`tokenizer`, `vocab_size`) trained on
    the training rows' texts, and `max_tokens` token-id columns per text (0 = padding, 1 = unknown; 'ngrams': its
    heaviest n-grams' ids, then their weights); else HASH_FEATURES hashed word counts per text (stateless).
    Columns: numeric, one-hot, [hashed text,] the embedded categoricals' codes, then the tokens of each text
    (`integer_mask_`: the codes and ids); `layout_` describes them for the model:
        {"numeric": n_num, "onehot": n_onehot, "cardinalities": [c1, ...], "bins": [[e0, e1, ...], ...],
         "text": [{"name": col, "length": L, "vocab": V, "weighted": bool}, ...]}
    bins: per numeric column, the sorted distinct quantiles (>= 2) of its transformed training values
    at n_bins + 1 levels, n_bins = min(48, max(2, n_train // 50)), at float32 precision (piecewise-
    linear encoding). States saved before the layout existed load with layout_ = None.
Image / sequence arrays
    per-channel mean / std over the train samples; x -> (x - mean) / std (std 0 -> 1).

Learned state: `in_shape_`, `feature_names_`, `mean_` / `std_` (per numeric column or per channel),
and for tables `median_`, `categories_` ({column: kept categories}), `columns_`, `layout_`.

preprocess.json is version 1 when an older reader would transform it the same way (standard scaling,
no embedded column), version 3 with text columns (each tokenizer as the library's JSON), else version 2.

Usage::

    pre = Preprocessor().fit(ds, train_idx)
    X_train = pre.transform_rows(ds, train_idx)   # or pre.transform(df_or_array)
    pre.save(run_dir); pre = Preprocessor.load(run_dir)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cotune.data.dataset import MODALITIES, Dataset
from cotune.data.scaling import NUMERIC_METHODS, TargetTransform, bin_edges, fit_column, scale_column
from cotune.data.text import TOKENIZERS, fit_texts, load_tokenizer, text_state, transform_texts
from cotune.errors import BundleError, DataError, invalid
from cotune.track import atomic_write_bytes

MAX_CATEGORIES = 50
MISSING = "__missing__"
OTHER = "__other__"
FILENAME = "preprocess.json"
FORMAT_VERSION = 3  # written with text columns; 2 when the state needs its numeric method or embeddings, else 1
VERSIONS = (1, 2, 3)  # readable
EMBED_ABOVE = 8
__all__ = ["Preprocessor", "TargetTransform", "NUMERIC_METHODS"]
_CHUNK = 4096  # samples per chunk when computing array statistics


def _category_strings(s: pd.Series) -> np.ndarray:
    """Values of a categorical column as strings, missing -> '__missing__', 3.0 -> '3'."""
    def one(v):
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            return str(int(v))
        return str(v)
    codes, uniques = pd.factorize(pd.Series(s).astype(object), use_na_sentinel=True)
    names = np.array([one(v) for v in uniques] + [MISSING], dtype=object)
    return names[codes]  # code -1 (missing) picks the trailing MISSING


def _cardinality(c: dict) -> int:
    """Codes of an embedded column: its kept categories, plus a slot for the others unless '__other__' is one."""
    return len(c["categories"]) + (0 if c["other"] else 1)


def _numeric_state(method: str, c: dict) -> dict:
    state = {"name": str(c["name"]), "median": float(c["median"]), "mean": float(c["mean"]), "std": float(c["std"])}
    if method == "robust":
        state["scale"] = float(c["scale"])
    elif method == "quantile":
        state["quantiles"] = [float(v) for v in c["quantiles"]]
        if len(state["quantiles"]) < 2 or np.any(np.diff(state["quantiles"]) < 0):
            raise ValueError(f"the quantiles of column {state['name']!r} must be >= 2 non-decreasing values")
    if not np.isfinite([v for k, v in state.items() if k in ("median", "mean", "std", "scale")]).all():
        raise ValueError(f"the statistics of column {state['name']!r} must be finite")
    return state


class Preprocessor:
    """sklearn-style: `fit(ds, train_idx)` learns state (attributes ending in `_`), `transform(X)`."""

    def __init__(self, max_categories: int = MAX_CATEGORIES, numeric: str = "standard", embed_above: int = EMBED_ABOVE,
                 embed: bool = False, tokenizer: str = "bpe", vocab_size: int = 4000, max_tokens: int = 64):
        for key, v in (("max_categories", max_categories), ("embed_above", embed_above), ("vocab_size", vocab_size),
                       ("max_tokens", max_tokens)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {v!r}")
        if numeric not in NUMERIC_METHODS:
            raise ValueError(f"numeric must be one of {NUMERIC_METHODS}, got {numeric!r}")
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
        self.max_categories, self.numeric, self.embed_above = int(max_categories), numeric, int(embed_above)
        self.embed, self.tokenizer, self.vocab_size, self.max_tokens = bool(embed), tokenizer, int(vocab_size), int(max_tokens)

    # ------------------------------------------------------------------------------------------
    def fit(self, ds: Dataset, train_idx) -> "Preprocessor":
        idx = np.asarray(train_idx)
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise ValueError("train_idx must be a 1-D integer index array")
        if len(idx) == 0:
            raise DataError(f"No training rows to fit the preprocessing of {ds.name!r} on; lower data.val / data.test "
                            "or add rows.")
        if ds.modality not in MODALITIES:
            raise ValueError(f"unknown modality {ds.modality!r}")
        self.modality_ = ds.modality
        if ds.modality == "tabular":
            self._fit_table(ds.X.iloc[idx], ds)
        else:
            self._fit_array(ds.X, idx)
        return self

    def _fit_table(self, df: pd.DataFrame, ds: Dataset) -> None:
        self.columns_ = [str(c) for c in ds.X.columns]
        self.numeric_, bins = [], []
        for col in ds.numeric:
            v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            v = np.where(np.isfinite(v), v, np.nan)
            present = v[~np.isnan(v)]
            median = float(np.median(present)) if len(present) else 0.0
            filled = np.where(np.isnan(v), median, v)
            mean, std = float(filled.mean()), float(filled.std())
            if not np.isfinite(std) or std <= 1e-12:
                std = 1.0
            c = {"name": str(col), "median": median, "mean": mean, "std": std, **fit_column(self.numeric, filled)}
            self.numeric_.append(c)
            bins.append(bin_edges(scale_column(self.numeric, c, filled).astype(np.float32), len(df)))
        self.categorical_ = []
        for col in ds.categorical:
            values, counts = np.unique(_category_strings(df[col]), return_counts=True)
            order = sorted(range(len(values)), key=lambda i: (-counts[i], values[i]))  # most frequent, then by name
            kept = sorted(str(values[i]) for i in order[:self.max_categories])
            other = len(values) > self.max_categories
            cats = kept + ([OTHER] if other else [])
            self.categorical_.append({"name": str(col), "categories": cats, "other": other,
                                      "embed": self.embed and len(cats) > self.embed_above})
        self.text_, self._tokenizers = fit_texts(df, getattr(ds, "text", ()), self.embed, self.tokenizer,
                                                 self.vocab_size, self.max_tokens)
        self._bins = bins
        self._finish()

    def _fit_array(self, X: np.ndarray, idx: np.ndarray) -> None:
        self._bins = None
        C = X.shape[1]
        axes = (0,) + tuple(range(2, X.ndim))
        total, count = np.zeros(C), 0
        for start in range(0, len(idx), _CHUNK):
            x = np.asarray(X[idx[start:start + _CHUNK]], dtype=np.float64)
            total += x.sum(axis=axes)
            count += x.size // C
        mean = total / count
        sq = np.zeros(C)
        shape = (1, C) + (1,) * (X.ndim - 2)
        for start in range(0, len(idx), _CHUNK):
            x = np.asarray(X[idx[start:start + _CHUNK]], dtype=np.float64)
            sq += ((x - mean.reshape(shape)) ** 2).sum(axis=axes)
        std = np.sqrt(sq / count)
        std[~(std > 1e-12)] = 1.0
        self.mean_ = [float(m) for m in mean]
        self.std_ = [float(s) for s in std]
        self.sample_shape_ = [int(s) for s in X.shape[1:]]
        self._finish()

    def _finish(self) -> None:
        self.layout_ = None
        if self.modality_ == "tabular":
            names = [c["name"] for c in self.numeric_]
            onehot = [c for c in self.categorical_ if not c["embed"]]
            embedded = [c for c in self.categorical_ if c["embed"]]
            for c in onehot:
                names += [f"{c['name']}={v}" for v in c["categories"]]
            hashed = [c for c in self.text_ if "hash" in c]
            tokens = [c for c in self.text_ if "hash" not in c]
            for c in hashed:
                names += [f"{c['name']}#{i}" for i in range(c["hash"])]
            whole = [False] * len(names) + [True] * len(embedded)  # the codes and token ids, not n-gram weights
            names += [c["name"] for c in embedded]
            for c in tokens:
                weights = [f"{c['name']}~{i}" for i in range(c["length"])] if "ngrams" in c else []
                names += [f"{c['name']}[{i}]" for i in range(c["length"])] + weights
                whole += [True] * c["length"] + [False] * len(weights)
            self.feature_names_, self.integer_mask_ = names, np.array(whole, dtype=bool)
            self.in_shape_ = (len(names),)
            self.median_, self.mean_, self.std_ = ([c[k] for c in self.numeric_] for k in ("median", "mean", "std"))
            self.categories_ = {c["name"]: list(c["categories"]) for c in self.categorical_}
            self._median = np.array(self.median_, dtype=np.float64)
            if self._bins is not None:  # None: a state saved before the layout existed
                if len(self._bins) != len(self.numeric_) or any(len(b) < 2 or b != sorted(set(b)) for b in self._bins):
                    raise ValueError("the layout's bins must hold sorted distinct edges (>= 2) per numeric column")
                self.layout_ = {"numeric": len(self.numeric_), "onehot": sum(len(c["categories"]) for c in onehot),
                                "cardinalities": [_cardinality(c) for c in embedded],
                                "bins": [list(b) for b in self._bins],
                                "text": [{"name": c["name"], "length": c["length"], "vocab": c["vocab"],
                                          "weighted": "ngrams" in c} for c in tokens]}
        else:
            self.in_shape_ = tuple(self.sample_shape_)
            self.feature_names_ = [f"channel{c}" for c in range(self.in_shape_[0])]

    # ------------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "modality_"):
            raise RuntimeError("Preprocessor is not fitted: call fit(ds, train_idx) or Preprocessor.load(dir) first")

    def transform_rows(self, ds: Dataset, idx) -> np.ndarray:
        """Transform the rows `idx` of `ds` (a convenience over `transform`)."""
        idx = np.asarray(idx, dtype=np.int64)
        return self.transform(ds.X.iloc[idx] if isinstance(ds.X, pd.DataFrame) else ds.X[idx])

    def transform(self, X) -> np.ndarray:
        """Features as a float32 array of shape (N, *in_shape_)."""
        self._check_fitted()
        if self.modality_ == "tabular":
            return self._transform_table(X)
        return self._transform_array(X)

    def _transform_table(self, X) -> np.ndarray:
        if isinstance(X, dict):
            X = pd.DataFrame(X)
        elif not isinstance(X, pd.DataFrame):
            arr = np.asarray(X)
            if arr.ndim != 2 or arr.shape[1] != len(self.columns_):
                raise DataError(invalid("The input features", f"a table with columns {self.columns_[:10]}",
                                        f"an array of shape {arr.shape}", "pass a DataFrame / CSV with those columns"))
            X = pd.DataFrame(arr, columns=self.columns_)
        X = X.copy(deep=False)
        X.columns = [str(c) for c in X.columns]
        required = [c["name"] for c in self.numeric_ + self.categorical_ + self.text_]
        missing = [c for c in required if c not in X.columns]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DataError(f"The input is missing {len(missing)} column(s) the model was trained on: "
                            f"{', '.join(repr(c) for c in missing[:5])}{more}; add them (empty cells are fine).")
        n = len(X)
        out = np.zeros((n, self.in_shape_[0]), dtype=np.float32)
        if self.numeric_:
            cols = []
            for j, c in enumerate(self.numeric_):
                s = X[c["name"]]
                if s.dtype.kind == "b":
                    s = s.astype(np.float64)
                parsed = pd.to_numeric(s, errors="coerce")
                bad = s.notna().to_numpy() & parsed.isna().to_numpy()
                if bad.any():
                    example = s[bad].iloc[0]
                    raise DataError(f"Column {c['name']!r} must be numeric but has {int(bad.sum())} non-numeric "
                                    f"value(s) such as {example!r}; clean those cells or leave them empty.")
                cols.append(parsed.to_numpy(dtype=np.float64, na_value=np.nan))
            v = np.stack(cols, axis=1) if cols else np.zeros((n, 0))
            v = np.where(np.isfinite(v), v, self._median)
            for j, c in enumerate(self.numeric_):
                out[:, j] = scale_column(self.numeric, c, v[:, j])
        offset = len(self.numeric_)
        code_col = offset + sum(len(c["categories"]) for c in self.categorical_ if not c["embed"])
        hashed, tokens = transform_texts(X, self.text_, self._tokenizers)
        out[:, code_col:code_col + hashed.shape[1]] = hashed
        code_col += hashed.shape[1]
        if tokens.shape[1]:
            out[:, -tokens.shape[1]:] = tokens
        rows = np.arange(n)
        for c in self.categorical_:
            cats = c["categories"]
            codes = pd.Index(cats, dtype=object).get_indexer(_category_strings(X[c["name"]])).astype(np.int64)
            if c["embed"]:  # the last code: every value outside the kept categories ('__other__' when kept)
                codes[codes < 0] = _cardinality(c) - 1
                out[:, code_col] = codes
                code_col += 1
                continue
            if c["other"]:
                codes[codes < 0] = len(cats) - 1  # the '__other__' column is last
            hit = codes >= 0
            out[rows[hit], offset + codes[hit]] = 1.0
            offset += len(cats)
        return out

    def _transform_array(self, X) -> np.ndarray:
        try:
            x = np.asarray(X, dtype=np.float32)
        except (TypeError, ValueError):
            raise DataError(invalid("The input array", f"numeric with samples of shape {self.in_shape_}",
                                    type(X).__name__)) from None
        if x.ndim == len(self.in_shape_) and self.in_shape_[0] == 1 and x.shape[1:] == self.in_shape_[1:]:
            x = x[:, None]  # (N, L) / (N, H, W) for single-channel data
        if x.ndim != len(self.in_shape_) + 1 or tuple(x.shape[1:]) != self.in_shape_:
            raise DataError(invalid("The input array", f"of shape (N, {', '.join(map(str, self.in_shape_))})",
                                    f"shape {x.shape}", "resize or reshape the inputs like the training data"))
        if not np.isfinite(x).all():
            raise DataError("The input array holds NaN or infinite values; fill or drop them first.")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = np.asarray(self.mean_, dtype=np.float32).reshape(shape)
        std = np.asarray(self.std_, dtype=np.float32).reshape(shape)
        return ((x - mean) / std).astype(np.float32, copy=False)

    # ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Fitted state as a JSON-serializable dict."""
        self._check_fitted()
        d = {"format": "cotune.preprocess", "version": 1, "modality": self.modality_,
             "max_categories": self.max_categories, "in_shape": list(self.in_shape_),
             "feature_names": list(self.feature_names_)}
        if self.modality_ == "tabular":
            needs_v2 = self.numeric != "standard" or any(c["embed"] for c in self.categorical_)
            d.update(version=FORMAT_VERSION if self.text_ else 2 if needs_v2 else 1, numeric_method=self.numeric,
                     embed_above=self.embed_above, embed=self.embed, columns=list(self.columns_),
                     numeric=[dict(c) for c in self.numeric_],
                     categorical=[{"name": c["name"], "categories": list(c["categories"]), "other": c["other"],
                                   "embed": c["embed"]} for c in self.categorical_])
            if self.text_:
                d.update(tokenizer=self.tokenizer, vocab_size=self.vocab_size, max_tokens=self.max_tokens,
                         text=[dict(c) for c in self.text_])
            if self.layout_ is not None:
                d["layout"] = {k: (list(v) if isinstance(v, list) else v) for k, v in self.layout_.items()}
        else:
            d.update(mean=list(self.mean_), std=list(self.std_), sample_shape=list(self.sample_shape_))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessor":
        try:
            if d.get("format") != "cotune.preprocess" or d.get("version") not in VERSIONS:
                raise ValueError(f"format {d.get('format')!r} version {d.get('version')!r}")
            pre = cls(max_categories=int(d["max_categories"]), numeric=str(d.get("numeric_method", "standard")),
                      embed_above=int(d.get("embed_above", EMBED_ABOVE)), embed=bool(d.get("embed", False)),
                      tokenizer=str(d.get("tokenizer", "bpe")), vocab_size=int(d.get("vocab_size", 4000)),
                      max_tokens=int(d.get("max_tokens", 64)))
            pre.modality_ = str(d["modality"])
            pre._bins = None
            if pre.modality_ == "tabular":
                pre.columns_ = [str(c) for c in d["columns"]]
                pre.numeric_ = [_numeric_state(pre.numeric, c) for c in d["numeric"]]
                pre.categorical_ = [{"name": str(c["name"]), "categories": [str(v) for v in c["categories"]],
                                     "other": bool(c["other"]), "embed": bool(c.get("embed", False))}
                                    for c in d["categorical"]]
                pre.text_ = [text_state(c) for c in d.get("text", [])]
                pre._tokenizers = {c["name"]: load_tokenizer(c["tokenizer"]) for c in pre.text_ if "tokenizer" in c}
                if d.get("layout") is not None:
                    pre._bins = [[float(e) for e in b] for b in d["layout"]["bins"]]
            elif pre.modality_ in MODALITIES:
                pre.mean_ = [float(v) for v in d["mean"]]
                pre.std_ = [float(v) for v in d["std"]]
                pre.sample_shape_ = [int(v) for v in d["sample_shape"]]
                if len(pre.mean_) != pre.sample_shape_[0] or len(pre.std_) != pre.sample_shape_[0]:
                    raise ValueError("channel statistics do not match the sample shape")
            else:
                raise ValueError(f"unknown modality {pre.modality_!r}")
            pre._finish()
            if d.get("layout") is not None and {"text": [], **d["layout"], "bins": pre.layout_["bins"]} != pre.layout_:
                raise ValueError("the layout does not match the columns")
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise BundleError(f"The preprocessing state is invalid ({type(e).__name__}: {' '.join(str(e).split())}); "
                              "re-run training to write a new one.") from None
        return pre

    def save(self, directory) -> Path:
        """Write `<directory>/preprocess.json` atomically; returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / FILENAME
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n").encode("utf-8"))
        return path

    @classmethod
    def load(cls, directory) -> "Preprocessor":
        path = Path(directory) / FILENAME
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BundleError(f"{str(path)!r} not found; point at a run directory written by training.") from None
        except OSError as e:
            raise BundleError(f"Cannot read {str(path)!r} ({' '.join(str(e).split())}); check the run directory.") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise BundleError(f"{str(path)!r} is not valid JSON ({e.msg} at line {e.lineno}); re-run training to "
                              "write a new one.") from None
        if not isinstance(d, dict):
            raise BundleError(f"{str(path)!r} does not hold a preprocessing state; re-run training to write a new one.")
        return cls.from_dict(d)

    def __repr__(self) -> str:
        if not hasattr(self, "modality_"):
            return f"Preprocessor(max_categories={self.max_categories}, numeric={self.numeric!r})"
        return f"Preprocessor({self.modality_}, in_shape={self.in_shape_})"
