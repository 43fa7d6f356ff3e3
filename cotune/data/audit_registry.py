"""The audit check registry: the `Issues` record every check returns, `register_check` / `list_checks`,
default severities, and the helpers checks build their records with.

This module imports no other audit module: `cotune.data.audit_models` (the proxy / outlier models),
the check modules (`cotune.data.audit_checks_columns`, `cotune.data.audit_checks_rows`) and
`cotune.data.audit` (the context, `audit()`, the report) all import it, never the other way round.
The built-in checks register when their modules are imported, which importing `cotune.data.audit` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cotune.data.dataset import Dataset

SEVERITIES = ("none", "low", "medium", "high")
PARTS = ("train", "val", "test")
CLASSIFICATION = ("binary", "multiclass")
# the label-issue proxies (cotune.data.audit_models): linear (C=0.1: see tests/test_audit.py), LightGBM kept
# small (200 shallow-ish trees on row and column subsamples), and per modality a small network of the family
# the search starts from, trained a fixed number of epochs (noisy labels are memorized late)
PROXY = {"max_fit": 100_000,
         "linear": {"C": 0.1, "max_iter": 300},
         "gbdt": {"n_estimators": 200, "learning_rate": 0.05, "num_leaves": 31, "subsample": 0.8, "subsample_freq": 1,
                  "colsample_bytree": 0.5, "min_child_samples": 10},
         "net": {"epochs": 20, "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-4, "gce_q": 0.7}}
NET_PROXY = {"image": ("cnn2d", {"width": 32, "depth": 2, "norm": "batch", "dropout": 0.0}),
             "sequence": ("cnn1d", {"width": 64, "depth": 3, "kernel_size": 7, "norm": "batch", "dropout": 0.0}),
             "tabular": ("mlp", {"width": 128, "depth": 2, "norm": "none", "dropout": 0.1})}
PROXY_CHOICE = ("linear", "gbdt")  # proxy 'auto' on tables: the one of these with the best out-of-fold accuracy
OUTLIER = {"n_estimators": 100, "max_samples": 256, "max_fit": 20_000, "threshold": 0.6}


@dataclass(frozen=True, eq=False)
class Issues:
    """What one check found. mask / score cover ALL rows of the dataset (not only the examined part)."""
    name: str
    mask: np.ndarray    # (N,) bool: True = this row has the problem
    score: np.ndarray   # (N,) float32 in [0, 1], higher = worse, 0 where not examined
    summary: dict       # JSON-able: count, share, severity, fix, message, unit, + check-specific keys
    extra: dict = field(default_factory=dict)  # arrays other code needs (not saved to JSON)

    @property
    def severity(self) -> str:
        return self.summary["severity"]


@dataclass(frozen=True)
class Check:
    name: str
    fn: Callable
    tasks: tuple | None = None        # None = every task
    modalities: tuple | None = None   # None = every modality
    expensive: bool = False
    level: str = "rows"               # 'rows' (row-level findings, in the table), 'columns' or 'dataset'

    def applies(self, ds: Dataset) -> bool:
        return (self.tasks is None or ds.task in self.tasks) and (self.modalities is None or ds.modality in self.modalities)

    def __call__(self, ctx) -> Issues:
        return self.fn(ctx)


CHECKS: dict[str, Check] = {}


def register_check(name: str, *, tasks=None, modalities=None, expensive: bool = False, level: str = "rows"):
    """Decorator: register ``fn(ctx) -> Issues`` as audit check `name` (names are API)."""
    if level not in ("rows", "columns", "dataset"):
        raise ValueError(f"level must be 'rows', 'columns' or 'dataset', got {level!r}")

    def deco(fn):
        CHECKS[name] = Check(name, fn, tuple(tasks) if tasks else None, tuple(modalities) if modalities else None,
                             bool(expensive), level)
        return fn
    return deco


def list_checks(ds: Dataset | None = None, *, expensive: bool = True) -> list[str]:
    """Registered check names (those applicable to `ds` when given; without the expensive ones if asked)."""
    return [n for n, c in CHECKS.items() if (ds is None or c.applies(ds)) and (expensive or not c.expensive)]


def severity(share: float, count: int | None = None) -> str:
    """Default severity from the share of examined rows: >= 5% high, >= 1% medium, any low, none."""
    if share >= 0.05:
        return "high"
    if share >= 0.01:
        return "medium"
    return "low" if share > 0 or (count or 0) > 0 else "none"


def worst(*levels: str) -> str:
    return max(levels, key=SEVERITIES.index)


# ----------------------------------------------------------------------------------------------
# helpers for writing checks


def make_issues(ctx, name, mask=None, score=None, *, examined, fix, message, count=None, sev=None, unit="rows",
                extra=None, **keys) -> Issues:
    """The `Issues` of check `name`: count / share of the `examined` rows and the default severity
    unless `sev` is given; `fix` only when something was found; `keys` go into the summary."""
    n = len(ctx)
    mask = np.zeros(n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    score = mask.astype(np.float32) if score is None else np.clip(np.asarray(score, dtype=np.float32), 0, 1)
    count = int(mask.sum()) if count is None else int(count)
    share = float(count / examined) if examined else 0.0
    summary = {"count": count, "share": round(share, 6), "severity": sev or severity(share, count),
               "fix": fix if count else "", "message": message, "unit": unit, **keys}
    return Issues(name=name, mask=mask, score=score, summary=summary, extra=dict(extra or {}))


def plural(n: int, what: str) -> str:
    """'1 row', '3 rows'."""
    return f"{n} {what}{'' if n == 1 else 's'}"


def name_list(cols, limit=5) -> str:
    """The first `limit` names, quoted, then 'and K more'."""
    cols = list(cols)
    return ", ".join(repr(c) for c in cols[:limit]) + (f" and {len(cols) - limit} more" if len(cols) > limit else "")
