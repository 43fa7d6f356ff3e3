"""The built-in audit checks of rows, for every modality: duplicates, near duplicates, conflicting
duplicates, leakage, outliers, class imbalance, label issues.

Imported (and so registered) by `cotune.data.audit`. It imports `cotune.data.audit_checks_columns`
first, so the column checks come first in `list_checks()` however the modules are imported.

Each check is ``fn(ctx: AuditContext) -> Issues``. Checks that act on training rows (duplicates,
near duplicates, conflicting duplicates, outliers) flag training rows only; label issues are checked in
every part (cleaning acts on training rows, and on validation rows when asked; never on test); leakage
flags held-out rows and their training twins; class imbalance is a finding about the whole dataset.
The expensive arrays (outlier scores, the proxy's out-of-fold probabilities) come from the context,
which computes them with `cotune.data.audit_models`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cotune.data import audit_checks_columns  # noqa: F401  (its checks register first)
from cotune.data.audit_registry import (CLASSIFICATION, OUTLIER, PARTS, SEVERITIES, Issues, make_issues, plural,
                                        register_check, severity, worst)

NEAR_GRID = 0.05        # near duplicates: every standardized feature within about this many std devs
TRUST_AGREE = (0.90, 0.95)  # label issues: the proxy's agreement with the labels it does not flag, for medium /
                            # high trust in its flags (hard tables: 0.83-0.93; real label noise: 0.96-0.98)
MINORITY = 3.0          # a class with fewer than 1/3 of the largest class's training rows is a minority


def _first_of_group(keys: np.ndarray) -> np.ndarray:
    """For each position, the position of the first element with the same key."""
    codes, uniques = pd.factorize(keys)
    first = np.empty(len(uniques), dtype=np.int64)
    pos = np.arange(len(keys), dtype=np.int64)
    first[codes[::-1]] = pos[::-1]   # the last write wins: the first occurrence
    return first[codes]


def _train_dups(ctx) -> np.ndarray:
    """(N,) int64: for a training row that repeats an earlier training row exactly, that row's index; else -1."""
    if "dups" not in ctx.memo:
        tr = ctx.train_idx
        first = tr[_first_of_group(ctx.row_hash[tr])]
        out = np.full(len(ctx), -1, dtype=np.int64)
        copies = first != tr
        out[tr[copies]] = first[copies]
        ctx.memo["dups"] = out
    return ctx.memo["dups"]


# ----------------------------------------------------------------------------------------------
# duplicates and leakage


@register_check("duplicates")
def duplicates(ctx) -> Issues:
    first = _train_dups(ctx)
    mask = first >= 0
    n, groups = int(mask.sum()), len(np.unique(first[mask]))
    msg = (f"{plural(n, 'training row')} repeat another training row exactly ({plural(groups, 'group')}); dropping "
           "them keeps one copy of each." if n else "No exact duplicate training rows.")
    return make_issues(ctx, "duplicates", mask, examined=len(ctx.train_idx), fix="data.clean.duplicates=drop",
                       message=msg, groups=groups, extra={"first": first})


@register_check("near_duplicates")
def near_duplicates(ctx) -> Issues:
    tr = ctx.train_idx
    flag = np.zeros(len(tr), dtype=bool)
    for keys in ctx.grid_keys(NEAR_GRID):
        k = keys[tr]
        flag |= _first_of_group(k) != np.arange(len(k))
    mask = np.zeros(len(ctx), dtype=bool)
    mask[tr[flag]] = True
    mask &= _train_dups(ctx) < 0  # exact duplicates are the 'duplicates' check's
    n = int(mask.sum())
    msg = (f"{plural(n, 'training row')} are near copies of another training row (every feature within about "
           f"{NEAR_GRID} standard deviations) without being exact duplicates." if n else "No near-duplicate training rows.")
    return make_issues(ctx, "near_duplicates", mask, examined=len(tr), fix="data.clean.duplicates=drop_near",
                       message=msg, grid=NEAR_GRID)


@register_check("conflicting_duplicates", tasks=CLASSIFICATION)
def conflicting_duplicates(ctx) -> Issues:
    tr = ctx.train_idx
    codes, _ = pd.factorize(ctx.row_hash[tr])
    size = np.bincount(codes)
    cand = size[codes] > 1
    frame = pd.DataFrame({"g": codes[cand], "y": ctx.ds.y[tr][cand]})
    labels = frame.groupby("g")["y"].transform("nunique").to_numpy()
    same = frame.groupby(["g", "y"])["y"].transform("size").to_numpy()
    mask, score = np.zeros(len(ctx), dtype=bool), np.zeros(len(ctx), dtype=np.float32)
    rows = tr[cand][labels > 1]
    mask[rows] = True
    score[rows] = 1.0 - same[labels > 1] / size[frame["g"].to_numpy()[labels > 1]]
    n, groups = int(mask.sum()), int(frame["g"][labels > 1].nunique())
    msg = (f"{plural(n, 'training row')} in {plural(groups, 'group')} of identical features carry different labels; "
           "at most one label per group can be right." if n else "No identical training rows with different labels.")
    return make_issues(ctx, "conflicting_duplicates", mask, score, examined=len(tr), fix="data.clean.duplicates=drop",
                       message=msg, groups=groups)


@register_check("leakage")
def leakage(ctx) -> Issues:
    tr = ctx.train_idx
    held = np.concatenate([ctx.val_idx, ctx.test_idx])
    hit_held = np.zeros(len(held), dtype=bool)
    hit_train = np.zeros(len(tr), dtype=bool)
    counts = []
    for keys in [ctx.row_hash] + ctx.grid_keys(NEAR_GRID):   # exact first, then the two near-duplicate grids
        in_train = np.isin(keys[held], keys[tr])
        hit_held |= in_train
        hit_train |= np.isin(keys[tr], keys[held][in_train])
        counts.append(int(hit_held.sum()))
    mask = np.zeros(len(ctx), dtype=bool)
    mask[held[hit_held]] = mask[tr[hit_train]] = True
    per = {p: int((mask & (ctx.part == p)).sum()) for p in ("val", "test")}
    n_held = per["val"] + per["test"]
    share = n_held / len(held) if len(held) else 0.0
    msg = (f"{per['val']} validation and {per['test']} test rows duplicate (exactly or nearly) one of "
           f"{plural(int(hit_train.sum()), 'training row')}, so held-out scores overstate performance."
           if n_held else "No validation or test row duplicates a training row.")
    return make_issues(ctx, "leakage", mask, examined=len(tr) + len(held), sev=worst(severity(share), "medium") if n_held
                       else "none", fix="data.clean.leakage=drop", message=msg, val=per["val"], test=per["test"],
                       train_twins=int(hit_train.sum()), exact=counts[0], heldout_share=round(share, 6),
                       extra={"train_rows": tr[hit_train], "heldout_rows": held[hit_held]})


# ----------------------------------------------------------------------------------------------
# statistics: outliers, class balance, label issues


@register_check("outliers", expensive=True)
def outliers(ctx) -> Issues:
    t = OUTLIER["threshold"]
    s = ctx.outlier_scores()
    mask = (s >= t) & ctx.is_train
    n = int(mask.sum())
    msg = (f"{plural(n, 'training row')} look anomalous (outlier score >= {t}: extreme values or an unusual "
           "combination of them)." if n else f"No training row has an outlier score >= {t}.")
    return make_issues(ctx, "outliers", mask, s, examined=len(ctx.train_idx), fix=f"data.clean.outlier_score={t}",
                       message=msg, threshold=t, extra={"scores": s})


@register_check("class_imbalance", tasks=CLASSIFICATION, level="dataset")
def class_imbalance(ctx) -> Issues:
    counts = np.bincount(ctx.ds.y[ctx.train_idx], minlength=ctx.ds.n_classes)
    total = max(int(counts.sum()), 1)
    ratio = float(counts.max() / counts.min()) if counts.min() > 0 else float("inf")
    minority = [str(c) for c, k in zip(ctx.ds.classes, counts) if k * MINORITY < counts.max()]
    sev = "high" if ratio >= 10 else "medium" if ratio >= 3 else "low" if ratio >= 1.5 else "none"
    msg = (f"The training classes are imbalanced: the largest is {ratio:.1f}x the smallest "
           f"({ctx.ds.classes[int(np.argmin(counts))]!r}, {counts.min() / total:.1%} of the training rows)."
           if sev != "none" else "The classes are balanced.")
    n_minor = int(sum(k for c, k in zip(ctx.ds.classes, counts) if str(c) in minority))
    return make_issues(ctx, "class_imbalance", examined=total, count=len(minority), unit="classes", sev=sev,
                       fix="data.balance=class_weights" if sev != "none" else "", message=msg,
                       ratio=round(ratio, 4) if np.isfinite(ratio) else None,
                       minority_share=round(counts.min() / total, 6), minority_classes=minority, minority_rows=n_minor,
                       class_counts={str(c): int(k) for c, k in zip(ctx.ds.classes, counts)})


@register_check("label_issues", tasks=CLASSIFICATION, expensive=True)
def label_issues(ctx) -> Issues:
    """Every row's label against a cross-validated proxy (see AuditContext.label_proxy), flagged with
    cleanlab's prune-by-noise-rate rule. How far to trust the flags: how well the proxy predicts the labels
    it does not flag. A proxy that agrees with nearly all of them knows the data, and a label it is sure is
    another class is likely wrong; one that misses many of the unflagged labels too finds the data hard,
    and its flags are then hard examples as much as wrong labels (relabelling those makes a model
    overconfident)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    kind, P, accuracies = ctx.label_proxy()
    rows = np.flatnonzero(np.isin(ctx.part, PARTS))
    y = ctx.ds.y
    labels = y[rows]
    present = np.unique(labels)   # cleanlab wants every class present: drop the absent ones' columns
    remap = np.searchsorted(present, labels)
    p = P[rows][:, present].astype(np.float64)
    p = np.where(p.sum(1, keepdims=True) > 0, p, 1.0) / np.maximum(p.sum(1, keepdims=True), 1e-12)
    mask, score = np.zeros(len(ctx), dtype=bool), np.zeros(len(ctx), dtype=np.float32)
    suggested = np.full(len(ctx), -1, dtype=np.int64)
    if len(present) >= 2:
        mask[rows] = find_label_issues(remap, p, filter_by="prune_by_noise_rate", n_jobs=1)
        score[rows] = 1.0 - get_label_quality_scores(remap, p, method="self_confidence")
    suggested[rows] = P[rows].argmax(1)
    n = int(mask.sum())
    rest = rows[~mask[rows]]
    agree = float(np.mean(suggested[rest] == y[rest])) if len(rest) else 0.0
    trust = "high" if agree >= TRUST_AGREE[1] else "medium" if agree >= TRUST_AGREE[0] else "low"
    by_part = {part: int(mask[ctx.part == part].sum()) for part in PARTS}
    dev = ctx.dev_idx
    acc = accuracies[kind]
    where = ", ".join(f"{part} {k}" for part, k in by_part.items())
    msg = (f"{plural(n, 'label')} look wrong ({where}; {n / max(len(rows), 1):.1%} of the rows): the {kind} proxy "
           f"(out-of-fold accuracy {acc:.1%}) is sure of another class. It agrees with {agree:.1%} of the labels it "
           f"does not flag, so trust in the flags is {trust}"
           + ({"low": ": the data is hard for it, and these look like hard examples as much as wrong labels",
               "medium": ": some flags may be hard examples"}.get(trust, "") + ".") if n
           else f"No label looks wrong to the {kind} proxy (out-of-fold accuracy {acc:.1%}).")
    base = severity(n / max(len(rows), 1), n)
    sev = {"low": "low" if n else "none", "medium": min(base, "medium", key=SEVERITIES.index), "high": base}[trust]
    fix = "data.clean.label_issues=drop (training rows), data.clean.val=drop (validation rows)"
    return make_issues(ctx, "label_issues", mask, score, examined=len(rows), fix=fix, message=msg, sev=sev,
                       proxy=kind, proxy_accuracy=round(acc, 4), proxy_candidates=accuracies,
                       unflagged_agreement=round(agree, 4), trust=trust, by_part=by_part,
                       dev_rows=int(len(dev)), extra={"pred_probs": P, "suggested": suggested})
