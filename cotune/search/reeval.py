"""The choice of the trial the final model refits, by cross-validation of the top trials (search.reeval).

    chosen, record = reevaluate(cfg, study, done, best, deadline)   # record: fit.json's 'reeval'

With few validation rows and many trials, the best trial on validation is partly the luckiest: its score is
the maximum of many noisy ones. So the top search.reeval distinct complete trials by validation score are
each scored again by search.reeval_folds-fold cross-validation over train + validation
(`pipeline.cross_validate`: per fold, the trial's data knobs on the other folds, its own early-stopping
epoch count with no early stopping, one score of the held-out fold by the study's metric; the test rows take
no part). The trial with the best mean fold score is the one the final model refits (fit.json's 'best');
a tie keeps the better one on validation.

It runs only when the budget's remainder covers it and the final refit after it (estimated from the trials'
own times: objective.cv_seconds, refit_seconds, AFTER_FINAL_S); the search keeps that time back while it is
a small share of the budget (objective.reeval_reserve). Otherwise, or when it runs out of time part-way, the
best trial on validation stays the choice and the record says why.

The top-k ensemble (search.top_k, ensemble.py) is unchanged: its members are the top-k trials on validation,
and it is kept when its validation score beats the chosen trial's (the single model it would replace), so
with the re-evaluation off the comparison is today's, against the best trial on validation.
"""
from __future__ import annotations

import math
import time

import numpy as np

from cotune.config import RunConfig
from cotune.errors import CotuneError, one_line
from cotune.search.ensemble import trial_epochs
from cotune.search.objective import AFTER_FINAL_S, REEVAL_MIN_BUDGET, cv_seconds, refit_seconds
from cotune.search.space import parse_budget
from cotune.search.storage import study_metric


def candidates(study, done, best, n: int) -> list:
    """The top n complete trials by validation score with distinct knobs, `best` first."""
    metric = study_metric(study)
    ranked = sorted(done, key=lambda t: t.values[0], reverse=metric.maximize)
    out, seen = [], set()
    for t in [best, *ranked]:
        key = tuple(sorted((k, repr(v)) for k, v in t.params.items()))
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out[:n]


def reevaluate(cfg: RunConfig, study, done, best, deadline: float | None) -> tuple[object, dict]:
    """(the trial the final model refits, fit.json's 'reeval' record); see the module docstring."""
    from cotune.pipeline import cross_validate
    n, folds, val_share = cfg.search.reeval, cfg.search.reeval_folds, cfg.data.split.val
    if n < 2:
        return best, {"skipped": f"off (search.reeval={n})"}
    if len(study.directions) > 1:
        return best, {"skipped": "two objectives: the final model is the Pareto front's best quality"}
    budget = parse_budget(cfg.search.budget)
    if budget is not None and budget < REEVAL_MIN_BUDGET:
        return best, {"skipped": f"a budget under {REEVAL_MIN_BUDGET / 60:.0f} minutes: its time goes to trials"}
    cands = candidates(study, done, best, n)
    if len(cands) < 2:
        return best, {"skipped": f"{len(cands)} distinct complete trial(s): nothing to choose between"}
    final_s = max(refit_seconds(t, val_share) for t in cands) + AFTER_FINAL_S  # whichever is chosen is refitted
    need = cv_seconds(cands, val_share, folds)
    if deadline is not None and time.time() + need + final_s > deadline:
        left = max(0.0, deadline - time.time())
        return best, {"skipped": f"out of time: {len(cands)} trials x {folds} folds needed about {need:.0f} s and the "
                                 f"final refit {final_s:.0f} s more, {left:.0f} s were left", "seconds_needed": need}
    metric = study_metric(study)
    t0, rows, stopped = time.time(), [], None
    for i, t in enumerate(cands):
        rest = cv_seconds(cands[i:], val_share, folds)
        if deadline is not None and time.time() + rest + final_s > deadline:
            stopped = f"out of time after {i} of {len(cands)} trials ({time.time() - t0:.0f} s); kept the best on validation"
            break
        epochs, t1 = trial_epochs(t, cfg), time.time()
        row = {"trial": t.number, "val": t.values[0], "epochs": epochs}
        try:
            scores = cross_validate(cfg.replace(**t.params, **{"runtime.progress": False}), folds, epochs,
                                    cfg.data.split.seed)
        except CotuneError as err:  # knobs that trained in the search but not on a fold (diverged): out of the running
            row.update(cv_mean=None, cv_sd=None, cv_scores=None, error=one_line(err)[:300])
        else:
            finite = [s for s in scores if math.isfinite(s)]
            row.update(cv_mean=float(np.mean(finite)) if finite else None,
                       cv_sd=float(np.std(finite, ddof=1)) if len(finite) > 1 else None, cv_scores=scores)
        rows.append({**row, "seconds": time.time() - t1})
    record = {"metric": metric.name, "folds": folds, "candidates": rows, "best_val_trial": best.number,
              "seconds": time.time() - t0, "seconds_needed": need}
    scored = [r for r in rows if r["cv_mean"] is not None]
    if stopped is not None or not scored:
        return best, {**record, "chosen": best.number,
                      "skipped": stopped or "no trial could be cross-validated; kept the best on validation"}
    top = scored[0]
    for r in scored[1:]:  # strictly better only: a tie keeps the better trial on validation (earlier in the list)
        if metric.better(r["cv_mean"], top["cv_mean"]):
            top = r
    return next(t for t in cands if t.number == top["trial"]), {**record, "chosen": top["trial"]}
