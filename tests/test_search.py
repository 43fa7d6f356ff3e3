"""The search's parts in one process: a trial's record when its knobs make no valid config, the study's
metric, the ensemble's keep-or-reject decision, and the two-objective (NSGA-II) path end to end."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from cotune.config import from_dict
from cotune.evaluate import Metric
from cotune.search.objective import Objective
from cotune.search.storage import open_study, storage_url, study_metric

IRIS = {"data": {"source": "sklearn:iris"}, "model": {"width": 8}, "train": {"epochs": 2},
        "search": {"trials": 1, "mlflow": "none"}, "runtime": {"threads": 1}}


def test_a_trial_whose_knobs_make_an_invalid_config_fails_with_its_reason(tmp_path):
    cfg = from_dict(IRIS)
    space = {"model.dropout": (0.96, 0.99)}  # outside model.dropout's valid [0, 0.95]: no valid config
    study, cfg, space = open_study(storage_url(tmp_path, None), "s", cfg, space)
    study.optimize(Objective(study, cfg, space, tmp_path, None, 1), n_trials=1, catch=(Exception,))
    (t,) = study.trials
    assert t.state.name == "FAIL" and "model.dropout" in t.user_attrs["fail_reason"]
    assert "seconds" in t.user_attrs
    assert "ConfigError" in (tmp_path / "trials" / "00000" / "error.txt").read_text()


def test_a_study_ranks_by_the_metric_stored_with_it(tmp_path):
    url = storage_url(tmp_path, None)
    study, _, _ = open_study(url, "r", from_dict(IRIS), {"train.lr": (1e-3, 1e-2)}, Metric("rmse", False))
    assert study.directions[0].name == "MINIMIZE" and study_metric(study) == Metric("rmse", False)
    old = optuna.create_study(storage=url, study_name="old", direction="maximize")  # no metric stored
    assert study_metric(old) == Metric("accuracy", True)
