"""Clean the training part from an audit report: index arrays in, index arrays out.

    need = needed_checks(duplicates="drop", label_issues="relabel")   # audit only these
    res = clean_train(train_idx, ds.y, report, duplicates="drop", label_issues="relabel")
    res.idx, res.y_train, res.removed, res.relabelled

Nothing is edited in place: the Dataset and `y` stay as they are; `res.y_train` is a new array of
the labels to train on (aligned with `res.idx`). Only training rows are ever removed or relabelled.

The report is duck-typed (this module does not import the audit): `report.issues` maps an issue
name to an object with `.mask` ((N,) bool over all rows), `.score` ((N,) float in [0, 1]) and
`.extra` (dict). Issues used:

=========================  ===================================================================
option                     rows removed / changed
=========================  ===================================================================
duplicates='drop'          flagged by 'duplicates' (the redundant copies, as the audit marks
                           them) or 'conflicting_duplicates'
duplicates='drop_near'     the above plus rows flagged by 'near_duplicates'
leakage='drop'             'leakage'.extra['train_rows'] (training rows that copy a val/test row)
outlier_score=t (< 1)      'outliers'.score >= t
label_issues='drop'        'label_issues'.mask and 'label_issues'.score >= label_threshold
label_issues='relabel'     the same rows get 'label_issues'.extra['suggested'] as their label
=========================  ===================================================================

A row removed for several reasons is counted once, under the first of: leakage, duplicates,
near_duplicates, outliers, label_issues. An issue the options need but the report lacks is an
internal error (ValueError): ask `needed_checks` first.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from cotune.errors import ConfigError, DataError, fmt_choices, invalid

DUPLICATES = ("keep", "drop", "drop_near")
LEAKAGE = ("keep", "drop")
LABEL_ISSUES = ("keep", "drop", "relabel")
REASONS = ("leakage", "duplicates", "near_duplicates", "outliers", "label_issues")


@dataclass
class CleanResult:
    idx: np.ndarray                # sorted int64 subset of train_idx
    y_train: np.ndarray            # labels to train on, aligned with idx (a new array)
    removed: dict = field(default_factory=dict)  # reason -> rows removed (each row counted once)
    relabelled: int = 0            # rows whose label was changed
    n_before: int = 0

    def to_dict(self) -> dict:
        return {"rows_before": self.n_before, "rows_after": int(len(self.idx)),
                "removed": {k: int(v) for k, v in self.removed.items()}, "relabelled": int(self.relabelled)}


def _check_options(duplicates, leakage, outlier_score, label_issues, label_threshold) -> None:
    if duplicates not in DUPLICATES:
        raise ConfigError(invalid("'data.clean.duplicates'", f"one of {fmt_choices(DUPLICATES)}", duplicates))
    if leakage not in LEAKAGE:
        raise ConfigError(invalid("'data.clean.leakage'", f"one of {fmt_choices(LEAKAGE)}", leakage))
    if (isinstance(outlier_score, bool) or not isinstance(outlier_score, numbers.Real)
            or not 0.5 < float(outlier_score) <= 1.0):
        raise ConfigError(invalid("'data.clean.outlier_score'", "a number above 0.5 and at most 1.0 (1.0 = off)",
                                  outlier_score, "e.g. --set data.clean.outlier_score=0.8"))
    if label_issues not in LABEL_ISSUES:
        raise ConfigError(invalid("'data.clean.label_issues'", f"one of {fmt_choices(LABEL_ISSUES)}", label_issues))
    if (isinstance(label_threshold, bool) or not isinstance(label_threshold, numbers.Real)
            or not 0.0 <= float(label_threshold) < 1.0):
        raise ConfigError(invalid("'data.clean.label_threshold'", "a number from 0 to below 1", label_threshold,
                                  "e.g. --set data.clean.label_threshold=0.5"))


def needed_checks(duplicates: str = "keep", leakage: str = "keep", outlier_score: float = 1.0,
                  label_issues: str = "keep", label_threshold: float = 0.0) -> set[str]:
    """The audit issue names these options read (empty when cleaning is off)."""
    _check_options(duplicates, leakage, outlier_score, label_issues, label_threshold)
    need: set[str] = set()
    if duplicates in ("drop", "drop_near"):
        need |= {"duplicates", "conflicting_duplicates"}
    if duplicates == "drop_near":
        need.add("near_duplicates")
    if leakage == "drop":
        need.add("leakage")
    if float(outlier_score) < 1.0:
        need.add("outliers")
    if label_issues != "keep":
        need.add("label_issues")
    return need


def _issue(report, name: str, n: int):
    issues = getattr(report, "issues", None) or {}
    if name not in issues:
        raise ValueError(f"the audit report has no {name!r} check, which the clean options need "
                         f"(it has {sorted(issues)}); compute needed_checks(...) first")
    issue = issues[name]
    for attr in ("mask", "score"):
        arr = getattr(issue, attr, None)
        if arr is not None and len(arr) != n:
            raise ValueError(f"audit issue {name!r}: .{attr} has {len(arr)} entries for {n} rows")
    return issue


def clean_train(train_idx, y, report, *, duplicates: str = "keep", leakage: str = "keep", outlier_score: float = 1.0,
                label_issues: str = "keep", label_threshold: float = 0.0) -> CleanResult:
    """Remove / relabel training rows as the options ask; see the module docstring."""
    _check_options(duplicates, leakage, outlier_score, label_issues, label_threshold)
    y = np.asarray(y)
    n = len(y)
    idx = np.sort(np.asarray(train_idx, dtype=np.int64).ravel())
    if label_issues != "keep" and y.dtype.kind not in "iub":
        raise ConfigError(f"data.clean.label_issues={label_issues!r} needs a classification target but the task is "
                          "regression; set data.clean.label_issues=keep.")
    drop = np.zeros(n, dtype=bool)  # rows (over the whole dataset) removed so far
    removed: dict[str, int] = {}
    in_train = np.zeros(n, dtype=bool)
    in_train[idx] = True

    def remove(reason: str, rows_mask: np.ndarray) -> None:
        new = rows_mask & in_train & ~drop
        removed[reason] = removed.get(reason, 0) + int(new.sum())
        drop[new] = True

    if leakage == "drop":
        rows = np.asarray(_issue(report, "leakage", n).extra.get("train_rows", ()), dtype=np.int64).ravel()
        m = np.zeros(n, dtype=bool)
        m[rows] = True
        remove("leakage", m)
    if duplicates in ("drop", "drop_near"):
        m = np.asarray(_issue(report, "duplicates", n).mask, dtype=bool) | \
            (np.asarray(_issue(report, "conflicting_duplicates", n).mask, dtype=bool)
             if "conflicting_duplicates" in report.issues else False)  # classification only
        remove("duplicates", m)
    if duplicates == "drop_near":
        remove("near_duplicates", np.asarray(_issue(report, "near_duplicates", n).mask, dtype=bool))
    if float(outlier_score) < 1.0:
        score = np.asarray(_issue(report, "outliers", n).score, dtype=np.float64)
        remove("outliers", score >= float(outlier_score))
    y_new = y.copy()
    relabelled = 0
    if label_issues != "keep":
        issue = _issue(report, "label_issues", n)
        flagged = (np.asarray(issue.mask, dtype=bool) & (np.asarray(issue.score, dtype=np.float64) >= float(label_threshold))
                   & in_train & ~drop)
        if label_issues == "drop":
            remove("label_issues", flagged)
        else:
            suggested = np.asarray(issue.extra["suggested"]).ravel()
            if len(suggested) != n:
                raise ValueError(f"audit issue 'label_issues': extra['suggested'] has {len(suggested)} entries for {n} rows")
            change = flagged & (suggested != y)
            y_new[change] = suggested[change].astype(y.dtype)
            relabelled = int(change.sum())
    keep = idx[~drop[idx]]
    if len(keep) == 0:
        raise DataError(f"Cleaning removed all {len(idx)} training rows ({', '.join(f'{k}: {v}' for k, v in removed.items())}); "
                        "relax the data.clean options.")
    return CleanResult(idx=keep, y_train=y_new[keep], removed=removed, relabelled=relabelled, n_before=int(len(idx)))
