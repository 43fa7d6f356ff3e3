"""Data audit: registered checks over one Dataset and its split, each giving one uniform `Issues` record.

A check is a function ``check(ctx) -> Issues`` registered with `register_check`. The modules, each
importing only those above it in this list:

    cotune.data.audit_registry        Issues, Check, CHECKS, register_check, list_checks, severity
    cotune.data.audit_models          the proxy / outlier models (oof_pred_probs, outlier_scores)
    cotune.data.audit_checks_columns  built-in checks of table columns (missing values, leaking features, ...)
    cotune.data.audit_checks_rows     built-in checks of rows (duplicates, leakage, outliers, label issues, ...)
    cotune.data.audit_checks_text     built-in checks of free-text table columns (empty, duplicate, shared texts)
    cotune.data.audit                 this module: AuditContext, audit(), AuditReport

This module imports the check modules (registering the built-in checks, columns first: that is
the order of `list_checks()`) and re-exports the registry's names. `audit()` builds one
`AuditContext` per call: the Preprocessor fitted on the training rows, the preprocessed feature
matrix of every row (images / sequences flattened) and, computed lazily and cached on disk, the
expensive arrays (out-of-fold predicted probabilities of a cheap proxy model, outlier scores).

Usage::

    report = audit(ds, train_idx, val_idx, test_idx)          # every applicable check
    report.issues["duplicates"].mask                           # (N,) bool over all rows
    report.print(); report.save(run_dir)                       # audit.json + audit.csv

Severity of a finding comes from `severity(share)`: >= 5% of the examined rows 'high', >= 1%
'medium', any 'low', none 'none'; a check that knows better overrides it (leakage is at least
'medium', a target-leaking feature is always 'high', class imbalance goes by the class ratio).
"""
from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

# importing the check modules registers the built-in checks, columns first: the order of list_checks()
from cotune.data import audit_checks_columns, audit_checks_rows, audit_checks_text  # noqa: F401
from cotune.data import audit_models as models
from cotune.data.audit_registry import (  # noqa: F401  (re-exported: callers import these from here)
    CHECKS, CLASSIFICATION, NET_PROXY, OUTLIER, PARTS, PROXY, PROXY_CHOICE, SEVERITIES, Check, Issues, list_checks,
    register_check, severity, worst)
from cotune.data.dataset import Dataset
from cotune.data.preprocess import Preprocessor
from cotune.data.sources import cache_dir
from cotune.errors import ConfigError, DataError, fmt_choices, invalid
from cotune.track import atomic_write_bytes, write_json

PROXIES = ("auto", *models.PROXY_KINDS)  # data.clean.proxy
DUP_IMAGE_SIDE = 8       # images are average-pooled to at most 8x8 per channel for near-duplicate detection
DUP_SEQUENCE_LEN = 64    # sequences to at most 64 steps per channel
MAX_FEATURE_FLOATS = 2 ** 27  # above this (512 MiB) the array feature matrix is the pooled one


# ----------------------------------------------------------------------------------------------
# the shared context


def _downsample(x: np.ndarray, limit: int) -> np.ndarray:
    """Average-pool every axis after the channel axis to at most `limit` cells."""
    for axis in range(2, x.ndim):
        size = x.shape[axis]
        if size > limit:
            edges = (np.arange(limit) * size) // limit
            counts = np.diff(np.append(edges, size)).astype(np.float32)
            shape = [1] * x.ndim
            shape[axis] = limit
            x = np.add.reduceat(x, edges, axis=axis) / counts.reshape(shape)
    return x


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer, elementwise on uint64 (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_rows(m: np.ndarray) -> np.ndarray:
    """One uint64 per row of an integer (or uint32-viewed) 2-D array; equal rows give equal hashes."""
    n, d = m.shape
    out = np.empty(n, dtype=np.uint64)
    salt = (np.arange(1, d + 1, dtype=np.uint64) * _GOLDEN)[None, :]
    step = max(1, 2 ** 21 // max(d, 1))
    with np.errstate(over="ignore"):
        for s in range(0, n, step):
            out[s:s + step] = _mix(_mix(m[s:s + step].astype(np.uint64) + salt).sum(axis=1, dtype=np.uint64))
    return out


class AuditContext:
    """Computed once per audit and shared by the checks; heavy arrays are built on first use."""

    def __init__(self, ds: Dataset, train_idx, val_idx, test_idx, *, seed: int = 0, cv_folds: int = 5,
                 cache: bool = True, proxy: str = "auto"):
        if proxy not in PROXIES:
            raise ConfigError(invalid("'data.clean.proxy'", f"one of {fmt_choices(PROXIES)}", proxy))
        self.ds, self.seed, self.cv_folds, self.cache, self.proxy = ds, int(seed), int(cv_folds), bool(cache), proxy
        n = len(ds)
        self.part = np.full(n, "unused", dtype="<U6")
        idx = {}
        for name, arr in zip(PARTS, (train_idx, val_idx, test_idx)):
            a = np.asarray(arr if arr is not None else [], dtype=np.int64).ravel()
            if len(a) and (a.min() < 0 or a.max() >= n):
                raise DataError(invalid(f"The {name} indices", f"row numbers from 0 to {n - 1}", f"{int(a.min())}..{int(a.max())}"))
            if (self.part[a] != "unused").any() or len(np.unique(a)) != len(a):
                raise DataError(f"The {name} indices repeat rows or overlap another part; each row may be in one part only.")
            self.part[a] = name
            idx[name] = np.sort(a)
        self.train_idx, self.val_idx, self.test_idx = idx["train"], idx["val"], idx["test"]
        self.is_train = self.part == "train"
        self.pre = Preprocessor().fit(ds, self.train_idx)
        self._computed: set[str] = set()   # names of the expensive arrays computed (not loaded) in this audit
        self.memo: dict = {}               # intermediate results checks share (exact-duplicate groups, grids)

    def __len__(self) -> int:
        return len(self.ds)

    @property
    def classification(self) -> bool:
        return self.ds.task in CLASSIFICATION

    @cached_property
    def features(self) -> np.ndarray:
        """(N, F) float32 preprocessed features of every row (arrays flattened; pooled when huge)."""
        ds = self.ds
        if ds.modality == "tabular":
            return np.ascontiguousarray(self.pre.transform(ds.X), dtype=np.float32)
        if int(np.prod(ds.X.shape, dtype=np.int64)) > MAX_FEATURE_FLOATS:
            return self.dup_features
        return np.concatenate([self.pre.transform(ds.X[s:s + 65536]).reshape(min(65536, len(ds) - s), -1)
                               for s in range(0, len(ds), 65536)])

    @cached_property
    def dup_features(self) -> np.ndarray:
        """Features for near-duplicate detection: tabular = `features`; images / sequences pooled."""
        ds = self.ds
        if ds.modality == "tabular":
            return self.features
        limit = DUP_IMAGE_SIDE if ds.modality == "image" else DUP_SEQUENCE_LEN
        parts = [_downsample(self.pre.transform(ds.X[s:s + 65536]), limit) for s in range(0, len(ds), 65536)]
        return np.ascontiguousarray(np.concatenate(parts).reshape(len(ds), -1), dtype=np.float32)

    @cached_property
    def row_hash(self) -> np.ndarray:
        """(N,) uint64 hash of each row's raw features: equal rows, equal hashes."""
        X = self.ds.X
        if isinstance(X, pd.DataFrame):
            return pd.util.hash_pandas_object(X, index=False).to_numpy(np.uint64)
        flat = X.reshape(len(X), -1)
        return np.concatenate([hash_rows((flat[s:s + 65536] + np.float32(0)).view(np.uint32))  # -0.0 -> 0.0
                               for s in range(0, len(flat), 65536)]) if len(flat) else np.zeros(0, np.uint64)

    def grid_keys(self, grid: float) -> list[np.ndarray]:
        """Hashes of `dup_features` rounded to a grid of `grid` standard deviations, for two grids
        offset by half a cell (rows within grid/2 of each other share a key in at least one)."""
        if grid not in self.memo:
            f = self.dup_features
            out = []
            for offset in (0.0, 0.5):
                q = [np.clip(np.floor(f[s:s + 65536] / grid + offset), -2.0 ** 40, 2.0 ** 40).astype(np.int64)
                     for s in range(0, len(f), 65536)]
                out.append(np.concatenate([hash_rows(c.view(np.uint64)) for c in q]) if q else np.zeros(0, np.uint64))
            self.memo[grid] = out
        return self.memo[grid]

    # -- expensive arrays, cached on disk ------------------------------------------------------
    @cached_property
    def data_key(self) -> str:
        h = hashlib.sha1()
        for a in (self.features, self.ds.y, self.train_idx):
            h.update(str(a.shape).encode() + str(a.dtype).encode())
            h.update(np.ascontiguousarray(a).data)
        return h.hexdigest()

    def cached(self, kind: str, settings: dict, compute: Callable[[], dict], data_key: str | None = None) -> dict:
        """Arrays from `compute()`, stored under cache_dir()/audit/<kind>-<sha1>.npz and reused; the key is
        `data_key` (default: the features, labels and training rows) and the settings."""
        if not self.cache:
            self._computed.add(kind)
            return compute()
        key = hashlib.sha1(((data_key or self.data_key) + json.dumps(settings, sort_keys=True)).encode()).hexdigest()
        path = Path(cache_dir()) / "audit" / f"{kind}-{key}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    return {k: z[k] for k in z.files}
            except Exception:  # unreadable entry: recompute and overwrite it
                pass
        arrays = compute()
        self._computed.add(kind)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        try:
            atomic_write_bytes(path, buf.getvalue())
        except OSError as e:
            warnings.warn(f"could not write the audit cache {path}: {e}", stacklevel=2)
        return arrays

    # -- the label-issue proxy: cross-validated over every row outside the test part ---------------
    @cached_property
    def dev_idx(self) -> np.ndarray:
        """Rows the label proxy cross-validates over: every row outside the test part (training rows left out
        by data.fraction included), whatever share of them this run trains on. The test rows are scored by
        the fold models, which never saw them: no test label trains anything."""
        return np.flatnonzero(self.part != "test")

    @cached_property
    def proxy_inputs(self) -> np.ndarray:
        """(N, ...) float32 inputs of the label proxy: preprocessed on the dev rows; per-sample shape kept
        for the network proxy on images and sequences, flattened otherwise."""
        pre = Preprocessor().fit(self.ds, self.dev_idx)
        X = np.concatenate([pre.transform(self.ds.X[s:s + 65536] if self.ds.modality != "tabular" else
                                          self.ds.X.iloc[s:s + 65536]) for s in range(0, len(self.ds), 65536)])
        return np.ascontiguousarray(X, dtype=np.float32)

    def proxy_kinds(self) -> tuple:
        """The proxies to fit: 'auto' is LightGBM or the linear model on tables (the better out-of-fold), and
        the modality's network on images and sequences."""
        if self.proxy != "auto":
            return (self.proxy,)
        return PROXY_CHOICE if self.ds.modality == "tabular" else ("net",)

    def proxy_probs(self, kind: str) -> np.ndarray:
        """(N, K) probabilities of proxy `kind`: out-of-fold over the dev rows, the fold models' mean on test."""
        dev, test = self.dev_idx, np.flatnonzero(self.part == "test")
        settings = {"max_fit": PROXY["max_fit"], kind: PROXY[kind], "folds": self.cv_folds, "seed": self.seed, "v": 2}
        if kind == "net":
            family, knobs = NET_PROXY[self.ds.modality]
            settings["net"] = {**PROXY["net"], "family": family, "knobs": knobs}
        h = hashlib.sha1()
        for a in (self.ds.y, test):
            h.update(str(a.shape).encode() + np.ascontiguousarray(a).data)
        h.update(hashlib.sha1(self.proxy_inputs.data).digest())

        def compute() -> dict:
            X = self.proxy_inputs
            if kind != "net":
                X = X.reshape(len(X), -1)
            oof, other = models.oof_pred_probs(X[dev], self.ds.y[dev], self.ds.n_classes, kind=kind,
                                               folds=self.cv_folds, seed=self.seed, settings=settings,
                                               max_fit=PROXY["max_fit"], X_other=X[test])
            out = np.zeros((len(self.ds), self.ds.n_classes), dtype=np.float32)
            out[dev], out[test] = oof, other
            return {"pred_probs": out}
        return self.cached(f"labels-{kind}", settings, compute, data_key=h.hexdigest())["pred_probs"]

    def label_proxy(self) -> tuple[str, np.ndarray, dict]:
        """(kind, (N, K) probabilities, {kind: out-of-fold accuracy on the dev rows}) of the proxy 'auto' picks."""
        if "proxy" not in self.memo:
            dev = self.dev_idx
            found = {k: self.proxy_probs(k) for k in self.proxy_kinds()}
            acc = {k: round(float(np.mean(P[dev].argmax(1) == self.ds.y[dev])), 4) if len(dev) else 0.0
                   for k, P in found.items()}
            best = max(acc, key=acc.get)
            self.memo["proxy"] = (best, found[best], acc)
        return self.memo["proxy"]

    def outlier_scores(self) -> np.ndarray:
        """(N,) float32 outlier score of every row (models fitted on training rows): ~0.5 typical, -> 1 anomalous."""
        settings = {**OUTLIER, "seed": self.seed, "v": 1}
        n_num = len(self.pre.numeric_) if self.ds.modality == "tabular" else 0
        return self.cached("outlier", settings, lambda: {"scores": models.outlier_scores(
            self.features, self.train_idx, n_num, seed=self.seed, **OUTLIER)})["scores"]


# ----------------------------------------------------------------------------------------------


def _resolve(ds: Dataset, checks) -> list[str]:
    if checks is None:
        return list_checks(ds)
    names = [checks] if isinstance(checks, str) else list(checks)
    for name in names:
        if name not in CHECKS:
            raise ConfigError(invalid("An audit check", f"one of {fmt_choices(list_checks())}", name))
        c = CHECKS[name]
        if c.tasks is not None and ds.task not in c.tasks:
            need = "a classification target (binary or multiclass)" if set(c.tasks) <= set(CLASSIFICATION) \
                else f"a {' or '.join(c.tasks)} target"
            raise ConfigError(f"The audit check {name!r} ({name.replace('_', ' ')}) needs {need}, but {ds.name!r} has a "
                              f"{ds.task} target; leave {name!r} out of the checks.")
        if c.modalities is not None and ds.modality not in c.modalities:
            raise ConfigError(f"The audit check {name!r} applies to {' / '.join(c.modalities)} data, but {ds.name!r} is "
                              f"{ds.modality} data; leave {name!r} out of the checks.")
    return list(dict.fromkeys(names))


def audit(ds: Dataset, train_idx, val_idx, test_idx, *, checks=None, seed: int = 0, cv_folds: int = 5,
          cache: bool = True, proxy: str = "auto") -> "AuditReport":
    """Run `checks` (default: every check that applies to the dataset's task / modality); `proxy` is the
    label-issue proxy (`PROXIES`)."""
    if isinstance(cv_folds, bool) or not isinstance(cv_folds, (int, np.integer)) or cv_folds < 2:
        raise ConfigError(invalid("'cv_folds'", "an integer >= 2", cv_folds, "e.g. 5"))
    names = _resolve(ds, checks)
    ctx = AuditContext(ds, train_idx, val_idx, test_idx, seed=seed, cv_folds=cv_folds, cache=cache, proxy=proxy)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"), warnings.catch_warnings():  # BLAS threads thrash on shared CPUs
        warnings.simplefilter("ignore")
        issues = {name: CHECKS[name](ctx) for name in names}
    return AuditReport(issues=issues, part=ctx.part, dataset=ds.name, levels={n: CHECKS[n].level for n in names},
                       computed=sorted(ctx._computed))


@dataclass
class AuditReport:
    issues: dict                   # check name -> Issues
    part: np.ndarray               # (N,) 'train' / 'val' / 'test' / 'unused'
    dataset: str = "data"
    levels: dict = field(default_factory=dict)    # check name -> 'rows' | 'columns' | 'dataset'
    computed: list = field(default_factory=list)  # expensive arrays computed (not read from the cache)

    def __getitem__(self, name: str) -> Issues:
        return self.issues[name]

    def findings(self) -> list[Issues]:
        """Issues sorted by severity (worst first), then in check order."""
        return sorted(self.issues.values(), key=lambda i: -SEVERITIES.index(i.severity))

    def summary(self) -> dict:
        rows = {p: int((self.part == p).sum()) for p in PARTS}
        return {"dataset": self.dataset, "rows": rows, "checks": {i.name: dict(i.summary) for i in self.findings()}}

    def table(self) -> pd.DataFrame:
        """One row per dataset row: row, part, then <check> (bool) and <check>_score per row-level check."""
        cols = {"row": np.arange(len(self.part)), "part": self.part}
        for name, iss in self.issues.items():
            if self.levels.get(name, "rows") == "rows":
                cols[name] = iss.mask
                cols[f"{name}_score"] = np.round(iss.score.astype(np.float64), 4)
        return pd.DataFrame(cols)

    def save(self, directory) -> Path:
        """Write <directory>/audit.json (summary) and <directory>/audit.csv (table), atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / "audit.json", self.summary())
        atomic_write_bytes(directory / "audit.csv", self.table().to_csv(index=False).encode())
        return directory

    def print(self, console=None) -> None:
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        colors = {"high": "red", "medium": "yellow", "low": "cyan", "none": "green"}
        table = Table(title=f"Data audit of {self.dataset}")
        for col in ("check", "rows affected", "share", "severity"):
            table.add_column(col, no_wrap=True)
        table.add_column("fix", overflow="fold")
        for i in self.findings():
            s = i.summary
            sev = s["severity"]
            table.add_row(i.name, f"{s['count']} {s.get('unit', 'rows')}", f"{100 * s['share']:.2f}%",
                          f"[{colors[sev]}]{sev}[/]", s["fix"] if sev != "none" else "-")
        console.print(table)
        for i in self.findings():
            if i.severity != "none":
                console.print(f"[bold]{i.name}[/]: {i.summary['message']}")

