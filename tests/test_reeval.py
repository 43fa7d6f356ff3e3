"""search.reeval: the top trials cross-validated over train + validation before the final refit.

The choice itself runs on hand-made studies with a stand-in cross_validate (fast); the folds and
pipeline.cross_validate run on iris; one real search (a worker process) checks fit.json and the refit.
"""
from __future__ import annotations

import json
import math
import time

import numpy as np
import optuna
import pytest

from cotune import pipeline
from cotune.config import from_dict
from cotune.data.split import kfold, split_indices
from cotune.errors import ConfigError
from cotune.search.objective import cv_seconds, reeval_reserve, refit_seconds
from cotune.search.reeval import candidates, reevaluate

optuna.logging.set_verbosity(optuna.logging.WARNING)
LR = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
IRIS = {"data": {"source": "sklearn:iris"}, "model": {"width": 8}, "train": {"epochs": 3},
        "runtime": {"threads": 1, "progress": False}}


def study_of(values, direction="maximize", metric="accuracy", seconds=1.0, lrs=None):
    """Completed trials with the given validation values (and knobs: distinct lrs unless given)."""
    study = optuna.create_study(direction=direction)
    study.set_user_attr("metric", metric)
    for i, v in enumerate(values):
        lr = 1e-3 * (i + 1) if lrs is None else lrs[i]
        study.add_trial(optuna.trial.create_trial(
            params={"train.lr": lr}, distributions={"train.lr": LR}, value=v,
            user_attrs={"seconds": seconds, "train_seconds": seconds / 2, "epochs_run": 4, "best_epoch": 2 + i}))
    return study


def fake_cv(means: dict, calls: list):
    """A cross_validate whose fold scores are `means[lr]` (nan-free), recording each call."""
    def cross_validate(cfg, folds, epochs, seed):
        calls.append((cfg.train.lr, folds, epochs, seed))
        return [means[cfg.train.lr] + d for d in np.linspace(-0.01, 0.01, folds)]
    return cross_validate


# ------------------------------------------------------------------ the choice

@pytest.mark.parametrize("direction, metric, values, cv, chosen", [
    ("maximize", "accuracy", [0.90, 0.97, 0.95, 0.80], {0.001: 0.5, 0.002: 0.80, 0.003: 0.85, 0.004: 0.99}, 2),
    ("maximize", "accuracy", [0.90, 0.97, 0.95, 0.80], {0.001: 0.5, 0.002: 0.85, 0.003: 0.85, 0.004: 0.99}, 1),  # tie
    ("minimize", "rmse", [3.0, 2.0, 2.5, 4.0], {0.001: 1.0, 0.002: 2.2, 0.003: 2.1, 0.004: 0.1}, 0),
])
def test_the_best_mean_cv_score_of_the_top_trials_is_chosen(monkeypatch, direction, metric, values, cv, chosen):
    study = study_of(values, direction, metric)
    calls = []
    monkeypatch.setattr(pipeline, "cross_validate", fake_cv(cv, calls))
    cfg = from_dict({**IRIS, "search": {"reeval": 3, "reeval_folds": 4}, "data": {"source": "sklearn:iris",
                                                                                 "split": {"seed": 7}}})
    best = study.best_trial
    trial, rec = reevaluate(cfg, study, study.trials, best, deadline=None)
    top3 = sorted(range(4), key=lambda i: values[i], reverse=direction == "maximize")[:3]
    assert [r["trial"] for r in rec["candidates"]] == top3 and rec["folds"] == 4 and rec["metric"] == metric
    assert trial.number == chosen == rec["chosen"] and rec["best_val_trial"] == best.number and "skipped" not in rec
    # each candidate: its own knobs, its early-stopping epoch count, the split's seed; never the 4th trial
    assert calls == [(1e-3 * (i + 1), 4, 2 + i, 7) for i in top3]
    for r in rec["candidates"]:
        assert r["val"] == values[r["trial"]] and r["epochs"] == 2 + r["trial"] and len(r["cv_scores"]) == 4
        assert r["cv_mean"] == pytest.approx(cv[1e-3 * (r["trial"] + 1)]) and r["cv_sd"] > 0
    assert rec["seconds"] >= 0 and json.dumps(rec)  # fit.json takes it as it is


def test_off_keeps_the_best_on_validation(monkeypatch):
    study = study_of([0.9, 0.95])
    monkeypatch.setattr(pipeline, "cross_validate", lambda *a: pytest.fail("cross-validated with reeval off"))
    for n in (0, 1):
        trial, rec = reevaluate(from_dict({"search": {"reeval": n}}), study, study.trials, study.best_trial, None)
        assert trial.number == 1 and rec == {"skipped": f"off (search.reeval={n})"}


def test_candidates_are_distinct_knobs_best_first():
    study = study_of([0.9, 0.95, 0.95, 0.8], lrs=[1e-3, 2e-3, 2e-3, 4e-3])  # trials 1 and 2: the same knobs
    got = [t.number for t in candidates(study, study.trials, study.best_trial, 3)]
    assert got == [study.best_trial.number, 0, 3] and study.best_trial.number in (1, 2)
    one = study_of([0.9, 0.9], lrs=[1e-3, 1e-3])
    trial, rec = reevaluate(from_dict({}), one, one.trials, one.best_trial, None)
    assert trial.number == one.best_trial.number and "nothing to choose" in rec["skipped"]


def test_it_is_skipped_when_the_budget_left_cannot_cover_it(monkeypatch):
    study = study_of([0.9, 0.95, 0.93], seconds=10.0)
    monkeypatch.setattr(pipeline, "cross_validate", lambda *a: pytest.fail("ran past the deadline"))
    cfg = from_dict({"search": {"reeval": 3, "reeval_folds": 3}})
    need = cv_seconds(study.trials, cfg.data.split.val, 3)
    assert need == pytest.approx(2 * sum(refit_seconds(t, cfg.data.split.val) for t in study.trials))
    trial, rec = reevaluate(cfg, study, study.trials, study.best_trial, deadline=time.time() + need)  # no room for the refit
    assert trial.number == 1 and rec["skipped"].startswith("out of time") and rec["seconds_needed"] == need
    calls = []
    monkeypatch.setattr(pipeline, "cross_validate", fake_cv({0.001: 0.99, 0.002: 0.5, 0.003: 0.5}, calls))
    trial, rec = reevaluate(cfg, study, study.trials, study.best_trial, deadline=time.time() + need + 100)
    assert trial.number == 0 and len(calls) == 3


def test_running_out_of_time_part_way_keeps_the_best_on_validation(monkeypatch):
    study = study_of([0.9, 0.95, 0.93], seconds=10.0)
    cfg = from_dict({"search": {"reeval": 3}})
    need = cv_seconds(study.trials, cfg.data.split.val, 3)
    deadline = time.time() + need + 30

    def slow(cfg, folds, epochs, seed):  # the first candidate takes far longer than its trial did
        monkeypatch.setattr(time, "time", lambda: deadline - 5)
        return [0.99] * folds

    monkeypatch.setattr(pipeline, "cross_validate", slow)
    trial, rec = reevaluate(cfg, study, study.trials, study.best_trial, deadline)
    assert trial.number == 1 and rec["chosen"] == 1 and "out of time after 1 of 3" in rec["skipped"]
    assert len(rec["candidates"]) == 1


def test_a_candidate_that_fails_on_a_fold_is_left_out(monkeypatch):
    from cotune.train import TrainingError
    study = study_of([0.9, 0.95, 0.93])

    def cv(cfg, folds, epochs, seed):
        if cfg.train.lr == 0.003:
            raise TrainingError("Training diverged: the loss became nan in epoch 2; lower train.lr")
        return [0.7 if cfg.train.lr == 0.002 else 0.8, math.nan, 0.8]

    monkeypatch.setattr(pipeline, "cross_validate", cv)
    trial, rec = reevaluate(from_dict({}), study, study.trials, study.best_trial, None)
    by = {r["trial"]: r for r in rec["candidates"]}
    assert "diverged" in by[2]["error"] and by[2]["cv_mean"] is None
    assert by[0]["cv_mean"] == pytest.approx(0.8) and math.isnan(by[0]["cv_scores"][1])  # nan folds: left out of the mean
    assert trial.number == 0 == rec["chosen"]


def test_the_search_keeps_time_back_only_when_it_is_a_small_share_of_the_budget():
    study = study_of([0.9, 0.95, 0.93, 0.91], seconds=10.0)
    val = 0.15
    three = sorted((refit_seconds(t, val) for t in study.trials), reverse=True)[:3]
    need = 2 * sum(three)  # 3 folds: two refits' worth per trial
    assert reeval_reserve(study.trials, from_dict({"search": {"budget": "1h"}})) == pytest.approx(need)
    assert reeval_reserve(study.trials, from_dict({"search": {"budget": "10m"}})) == 0.0 or need <= 150  # over a quarter
    assert reeval_reserve(study.trials, from_dict({"search": {"budget": "1h", "reeval": 0}})) == 0.0
    assert reeval_reserve(study.trials, from_dict({"search": {"trials": 9}})) == 0.0  # no deadline: no reserve


def test_the_search_keeps_time_for_the_refit_of_the_trial_that_can_become_final():
    """Without search.reeval's cross-validation only the best trial can be the final model: the search keeps
    time for its refit, not the slowest trial's; with the cross-validation, for the slowest of its top trials."""
    from cotune.search.objective import AFTER_FINAL_S, estimate_final
    study = optuna.create_study(direction="maximize")
    for v, secs in ((0.9, 10.0), (0.8, 500.0), (0.85, 20.0), (0.7, 300.0)):
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=v, user_attrs={"seconds": secs}))
    t = study.trials
    short = from_dict({"search": {"budget": "10m"}})  # cross-validating these trials: over a quarter of it, so none
    assert estimate_final(t, short, maximize=True) == pytest.approx(refit_seconds(t[0], 0.15) + AFTER_FINAL_S)
    assert estimate_final(t, short, maximize=False) == pytest.approx(refit_seconds(t[3], 0.15) + AFTER_FINAL_S)
    assert estimate_final(t, short) == pytest.approx(refit_seconds(t[1], 0.15) + AFTER_FINAL_S)  # direction unknown
    long = from_dict({"search": {"budget": "10h", "reeval": 3}})
    reserve = reeval_reserve(t, long)
    assert reserve > 0 and estimate_final(t, long, maximize=True) == pytest.approx(
        reserve + refit_seconds(t[1], 0.15) + AFTER_FINAL_S)  # the top 3 hold the 500 s trial


# ------------------------------------------------------------------ folds and pipeline.cross_validate

def test_kfold_parts_are_disjoint_cover_the_rows_and_keep_class_shares():
    y = np.repeat([0, 1, 2], [60, 30, 9])
    idx = np.arange(3, 102)  # dataset rows 3..101
    yy = np.concatenate([np.zeros(3, int), y])
    parts = kfold(idx, 3, seed=1, y=yy)
    assert len(parts) == 3 and np.array_equal(np.sort(np.concatenate(parts)), idx)
    for p in parts:
        assert np.array_equal(p, np.sort(p)) and p.dtype == np.int64
        assert np.bincount(yy[p], minlength=3).tolist() == [20, 10, 3]  # stratified
    again = kfold(idx, 3, seed=1, y=yy)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, kfold(idx, 3, seed=2, y=yy)))
    plain = kfold(idx, 4, seed=0)  # regression: plain shuffled folds
    assert sorted(map(len, plain)) == [24, 25, 25, 25]
    tiny = kfold(np.arange(4), 3, seed=0, y=np.array([0, 1, 2, 3]))  # no class can be stratified: plain folds
    assert np.array_equal(np.sort(np.concatenate(tiny)), np.arange(4))


@pytest.mark.parametrize("override, needle", [("search.reeval=-1", "'search.reeval' must be an integer >= 0"),
                                              ("search.reeval_folds=1", "'search.reeval_folds' must be an integer >= 2"),
                                              ("search.reeval_folds=2.5", "must be an integer")])
def test_bad_reeval_knobs_are_one_line(override, needle):
    with pytest.raises(ConfigError) as e:
        from_dict({}, [override])
    assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="number of folds") as e:
        kfold(np.arange(3), 4)
    assert "\n" not in str(e.value)


def test_cross_validate_holds_out_train_and_validation_rows_only(monkeypatch):
    """Per fold: the other folds train (through prepare's stages), the held-out fold is scored and never
    validated on during training, for exactly the epochs asked; the test rows are never in either."""
    cfg = from_dict({**IRIS, "data": {"source": "sklearn:iris", "balance": "oversample", "split": {"seed": 3}}})
    ds = pipeline.load_data(cfg)
    tr, va, te = split_indices(ds, val=0.15, test=0.15, seed=3)
    seen, trained = [], []
    real_prepare, real_train = pipeline.prepare, pipeline.train

    def prepare(c, d, merge_val=False, parts=None):
        seen.append(parts)
        out = real_prepare(c, d, merge_val, parts)
        assert np.array_equal(out.val, parts[1]) and np.array_equal(out.test, te)
        assert len(np.intersect1d(out.train_idx, np.concatenate([parts[1], te]))) == 0
        assert out.summary["balance"]["method"] == "oversample"  # the data knobs act on the training folds
        return out

    def train(model, train_data, val_data, tcfg, *a, **kw):
        trained.append((val_data, tcfg.epochs, tcfg.patience))
        return real_train(model, train_data, val_data, tcfg, *a, **kw)

    monkeypatch.setattr(pipeline, "prepare", prepare)
    monkeypatch.setattr(pipeline, "train", train)
    scores = pipeline.cross_validate(cfg, 3, 5, seed=3)
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
    pool = np.concatenate([tr, va])
    held = [p[1] for p in seen]
    assert np.array_equal(np.sort(np.concatenate(held)), np.sort(pool))
    for train_rows, held_rows, test_rows in seen:
        assert np.array_equal(test_rows, te) and not np.intersect1d(held_rows, te).size
        assert not np.intersect1d(train_rows, te).size and not np.intersect1d(train_rows, held_rows).size
        assert np.array_equal(np.sort(np.concatenate([train_rows, held_rows])), np.sort(pool))
    assert trained == [(None, 5, 0)] * 3
    assert pipeline.cross_validate(cfg, 3, 5, seed=3) == pytest.approx(scores)  # seeded


def test_cross_validate_scores_regression_by_its_metric():
    cfg = from_dict({**IRIS, "data": {"source": "sklearn:diabetes"}, "search": {"metric": "mae"}})
    scores = pipeline.cross_validate(cfg, 2, 2, seed=0)
    assert len(scores) == 2 and all(s > 1.0 for s in scores)  # target units (diabetes: tens)


# ------------------------------------------------------------------ a real search

@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """4 trials in a worker process, then the real cross-validation of the top 3 in this one, except that the
    third candidate (the worst of them on validation) is made to win it, so the refit must follow the choice."""
    import cotune
    out = tmp_path_factory.mktemp("reeval") / "iris"
    real, calls = pipeline.cross_validate, []

    def third_wins(cfg, folds, epochs, seed):
        calls.append(cfg.train.lr)
        scores = real(cfg, folds, epochs, seed)
        return [1.0] * folds if len(calls) == 3 else scores

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "cross_validate", third_wins)
        res = cotune.fit("sklearn:iris", trials=4, workers=1, out=out, overrides=[
            "train.epochs=3", "model.width=8", "runtime.threads=1", "search.mlflow=none", "search.top_k=1",
            "search.pruner=none", "search.reeval=3", "search.reeval_folds=2"])
    return out, res


def test_a_search_records_the_cross_validation_and_refits_its_choice(searched):
    out, res = searched
    state = json.loads((out / "fit.json").read_text())
    rec = state["reeval"]
    study = optuna.load_study(study_name=out.name, storage=f"sqlite:///{out}/study.db")
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert "skipped" not in rec and rec["folds"] == 2 and rec["metric"] == "accuracy"
    assert len(done) == 4 and len(rec["candidates"]) == 3  # distinct knobs: the sampler never repeats here
    assert rec["candidates"][0]["trial"] == study.best_trial.number == rec["best_val_trial"]
    for c in rec["candidates"]:
        t = study.trials[c["trial"]]
        assert c["val"] == t.value and c["epochs"] == max(1, t.user_attrs["best_epoch"]) and len(c["cv_scores"]) == 2
        assert c["cv_mean"] == pytest.approx(np.mean(c["cv_scores"]))
    chosen = study.trials[rec["chosen"]]
    assert chosen.number == rec["candidates"][2]["trial"] != study.best_trial.number
    assert rec["candidates"][2]["cv_mean"] == 1.0 and all(0 <= c["cv_mean"] <= 1 for c in rec["candidates"][:2])
    # the final model: the chosen trial's knobs, refitted on train + validation for its epochs
    assert state["best"]["number"] == chosen.number == res.best["number"]
    assert state["final"]["trials"] == [chosen.number]
    final_cfg = from_dict(json.loads((out / "final" / "config.json").read_text()))
    base = from_dict(study.user_attrs["config"])
    assert final_cfg.replace(out=None) == base.replace(**chosen.params, out=None, **{"runtime.progress": False})
    metrics = json.loads((out / "final" / "metrics.json").read_text())
    assert metrics["train"]["epochs_run"] == max(1, chosen.user_attrs["best_epoch"])
    # the report says which trial it chose, and that it was not the best on validation
    from cotune.api import report
    page = report(out).read_text()
    assert "top 3 trials" in page and f"chose #{chosen.number}: mean accuracy 1" in page
    assert f"the best on validation alone was #{study.best_trial.number}" in page


def test_a_short_budget_spends_its_time_on_trials(monkeypatch):
    study = study_of([0.90, 0.97, 0.95, 0.80], "maximize", "accuracy")
    cfg = from_dict({**IRIS, "search": {"budget": "60s"}})
    monkeypatch.setattr(pipeline, "cross_validate", lambda *a: pytest.fail("cross-validated under a short budget"))
    trial, rec = reevaluate(cfg, study, study.trials, study.best_trial, deadline=time.time() + 1000)
    assert trial.number == study.best_trial.number and "under 5 minutes" in rec["skipped"]
    assert reeval_reserve(study.trials, cfg) == 0.0
