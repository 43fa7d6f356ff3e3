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
duplicates='drop_near'     the above plus rows flagged by 'near_duplicates' or, on a table with text
                           columns, 'text_duplicates' (exact or near-duplicate texts)
leakage='drop'             'leakage'.extra['train_rows'] (training rows that copy a val/test row), and
                           'text_overlap'.extra['train_rows'] (training texts a val/test row repeats)
outlier_score=t (< 1)      'outliers'.score >= t
label_issues='drop'        'label_issues'.mask and 'label_issues'.score >= label_threshold
label_issues='relabel'     the same rows get 'label_issues'.extra['suggested'] as their label
val='drop' / 'relabel'     `clean_val`: the same for flagged validation rows (test rows: never)
=========================  ===================================================================

Label cleaning acts only when the audit's trust in its flags ('label_issues'.summary['trust']: low /
medium / high, see the check) is at least `min_trust`: a proxy that finds the data hard flags hard
examples as much as wrong labels, and relabelling those makes a model overconfident.

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
TRUST = ("low", "medium", "high")  # the audit's trust in its label flags, lowest first
REASONS = ("leakage", "duplicates", "near_duplicates", "outliers", "label_issues")


@dataclass
class CleanResult:
    idx: np.ndarray                # sorted int64 subset of train_idx
    y_train: np.ndarray            # labels to train on, aligned with idx (a new array)
    removed: dict = field(default_factory=dict)  # reason -> rows removed (each row counted once)
    relabelled: int = 0            # rows whose label was changed
    n_before: int = 0
    skipped: str | None = None     # why label cleaning did nothing although asked

    def to_dict(self) -> dict:
        d = {"rows_before": self.n_before, "rows_after": int(len(self.idx)),
             "removed": {k: int(v) for k, v in self.removed.items()}, "relabelled": int(self.relabelled)}
        return {**d, "skipped": self.skipped} if self.skipped else d


def _check_options(duplicates, leakage, outlier_score, label_issues, label_threshold, val="keep", min_trust="high") -> None:
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
    if val not in LABEL_ISSUES:
        raise ConfigError(invalid("'data.clean.val'", f"one of {fmt_choices(LABEL_ISSUES)}", val))
    if min_trust not in TRUST:
        raise ConfigError(invalid("'data.clean.min_trust'", f"one of {fmt_choices(TRUST)}", min_trust))


def needed_checks(duplicates: str = "keep", leakage: str = "keep", outlier_score: float = 1.0,
                  label_issues: str = "keep", label_threshold: float = 0.0, val: str = "keep", min_trust: str = "high",
                  proxy: str = "auto") -> set[str]:
    """The audit issue names these options read (empty when cleaning is off)."""
    _check_options(duplicates, leakage, outlier_score, label_issues, label_threshold, val, min_trust)
    need: set[str] = set()
    if duplicates in ("drop", "drop_near"):
        need |= {"duplicates", "conflicting_duplicates"}
    if duplicates == "drop_near":
        need |= {"near_duplicates", "text_duplicates"}
    if leakage == "drop":
        need |= {"leakage", "text_overlap"}
    if float(outlier_score) < 1.0:
        need.add("outliers")
    if label_issues != "keep" or val != "keep":
        need.add("label_issues")
    return need


def _label_flags(report, n: int, label_threshold: float, min_trust: str):
    """(issue, (N,) bool: the rows label cleaning acts on), or (issue, None) when the audit does not trust
    its flags enough."""
    issue = _issue(report, "label_issues", n)
    trust = (getattr(issue, "summary", None) or {}).get("trust", "high")
    if TRUST.index(trust) < TRUST.index(min_trust):
        return issue, None
    return issue, np.asarray(issue.mask, dtype=bool) & (np.asarray(issue.score, dtype=np.float64) >= float(label_threshold))


def _suggested(issue, n: int) -> np.ndarray:
    suggested = np.asarray(issue.extra["suggested"]).ravel()
    if len(suggested) != n:
        raise ValueError(f"audit issue 'label_issues': extra['suggested'] has {len(suggested)} entries for {n} rows")
    return suggested


def clean_val(val_idx, y, report, *, val: str = "keep", label_threshold: float = 0.0, min_trust: str = "high",
              **_) -> tuple[np.ndarray, np.ndarray, dict]:
    """(validation rows kept, their labels, {'dropped': k, 'relabelled': k}) under data.clean.val: flagged
    validation rows kept, dropped or relabelled to the proxy's prediction (the other clean options are
    ignored here). A validation part it would empty is kept as it is."""
    y = np.asarray(y)
    idx = np.sort(np.asarray(val_idx, dtype=np.int64).ravel())
    if val == "keep" or not len(idx):
        return idx, y[idx].copy(), {"dropped": 0, "relabelled": 0}
    if y.dtype.kind not in "iub":
        raise ConfigError(f"data.clean.val={val!r} needs a classification target but the task is regression; "
                          "set data.clean.val=keep.")
    issue, act = _label_flags(report, len(y), label_threshold, min_trust)
    if act is None:
        return idx, y[idx].copy(), {"dropped": 0, "relabelled": 0, "skipped": "the audit does not trust its flags"}
    flagged = act[idx]
    if val == "drop":
        keep = idx[~flagged]
        if not len(keep):
            return idx, y[idx].copy(), {"dropped": 0, "relabelled": 0, "skipped": "it would drop every validation row"}
        return keep, y[keep].copy(), {"dropped": int(flagged.sum()), "relabelled": 0}
    labels = y[idx].copy()
    new = _suggested(issue, len(y))[idx]
    change = flagged & (new != labels) & (new >= 0)
    labels[change] = new[change].astype(y.dtype)
    return idx, labels, {"dropped": 0, "relabelled": int(change.sum())}


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
                label_issues: str = "keep", label_threshold: float = 0.0, val: str = "keep", min_trust: str = "high",
                proxy: str = "auto") -> CleanResult:
    """Remove / relabel training rows as the options ask; see the module docstring (`val` and `proxy` are
    for `clean_val` and the audit)."""
    _check_options(duplicates, leakage, outlier_score, label_issues, label_threshold, val, min_trust)
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

    issues = getattr(report, "issues", None) or {}
    if leakage == "drop":
        m = np.zeros(n, dtype=bool)
        for name in ("leakage", "text_overlap"):  # text_overlap: tables only
            if name == "leakage" or name in issues:
                m[np.asarray(_issue(report, name, n).extra.get("train_rows", ()), dtype=np.int64).ravel()] = True
        remove("leakage", m)
    if duplicates in ("drop", "drop_near"):
        m = np.asarray(_issue(report, "duplicates", n).mask, dtype=bool) | \
            (np.asarray(_issue(report, "conflicting_duplicates", n).mask, dtype=bool)
             if "conflicting_duplicates" in report.issues else False)  # classification only
        remove("duplicates", m)
    if duplicates == "drop_near":
        remove("near_duplicates", np.asarray(_issue(report, "near_duplicates", n).mask, dtype=bool) |
               (np.asarray(_issue(report, "text_duplicates", n).mask, dtype=bool) if "text_duplicates" in issues else False))
    if float(outlier_score) < 1.0:
        score = np.asarray(_issue(report, "outliers", n).score, dtype=np.float64)
        remove("outliers", score >= float(outlier_score))
    y_new = y.copy()
    relabelled = 0
    skipped = None
    if label_issues != "keep":
        issue, act = _label_flags(report, n, label_threshold, min_trust)
        if act is None:
            skipped = "label cleaning skipped: the audit does not trust its label flags (data.clean.min_trust)"
            act = np.zeros(n, dtype=bool)
        flagged = act & in_train & ~drop
        if label_issues == "drop":
            remove("label_issues", flagged)
        else:
            suggested = _suggested(issue, n)
            change = flagged & (suggested != y) & (suggested >= 0)
            y_new[change] = suggested[change].astype(y.dtype)
            relabelled = int(change.sum())
    keep = idx[~drop[idx]]
    if len(keep) == 0:
        raise DataError(f"Cleaning removed all {len(idx)} training rows ({', '.join(f'{k}: {v}' for k, v in removed.items())}); "
                        "relax the data.clean options.")
    return CleanResult(idx=keep, y_train=y_new[keep], removed=removed, relabelled=relabelled, n_before=int(len(idx)),
                       skipped=skipped)
