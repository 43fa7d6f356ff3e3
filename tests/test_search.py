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
from cotune.search.storage import _sampler, open_study, storage_url, study_metric

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


# ------------------------------------------------------------------ the ensemble's keep-or-reject decision

def _done_study(tmp_path, direction: str, values: list[float], metric: str):
    """A study of completed trials whose run directories hold a (dummy) saved model."""
    study = optuna.create_study(direction=direction)
    study.set_user_attr("metric", metric)
    for i, v in enumerate(values):
        d = tmp_path / f"t{i}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"")
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=v,
                                                  user_attrs={"run_dir": str(d), "seconds": 10.0}))
    return study


@pytest.mark.parametrize("direction,metric,values,ens,kept", [
    ("maximize", "accuracy", [0.90, 0.95, 0.80], 0.96, True),
    ("maximize", "accuracy", [0.90, 0.95, 0.80], 0.95, False),   # a tie keeps the single model
    ("minimize", "rmse", [3.0, 2.0, 4.0], 1.9, True),
    ("minimize", "rmse", [3.0, 2.0, 4.0], 2.5, False),
])
def test_the_ensemble_is_kept_only_when_it_beats_the_best_trial(tmp_path, monkeypatch, direction, metric, values, ens,
                                                                  kept):
    from cotune import pipeline
    from cotune.search.ensemble import ensemble_choice
    study = _done_study(tmp_path, direction, values, metric)
    seen = []
    monkeypatch.setattr(pipeline, "evaluate_ensemble", lambda cfg, dirs: seen.append(dirs) or {"val": {metric: ens}})
    choice = ensemble_choice(from_dict({"search": {"top_k": 2}}), study, study.trials)
    best = 1  # trial 1 is the best on both directions
    assert choice["kept"] is kept and choice["members"][0] == best and len(choice["members"]) == 2
    assert choice["best_single_val"] == values[best] and choice["metric"] == metric
    assert [Path(d).name for d in seen[0]] == [f"t{best}", f"t{sorted(range(3), key=lambda i: values[i], reverse=direction == 'maximize')[1]}"]
    assert ensemble_choice(from_dict({"search": {"top_k": 1}}), study, study.trials) is None


# ------------------------------------------------------------------ searches end to end (worker processes)

def _fit(tmp_path, data, *overrides, **kw):
    import cotune
    return cotune.fit(data, overrides=["train.epochs=3", "model.width=8", "runtime.threads=1", "search.mlflow=none",
                                       *overrides], workers=1, out=tmp_path, **kw)


def test_a_kept_ensemble_is_refitted_on_train_and_validation(tmp_path, monkeypatch):
    """Regression: the study minimizes RMSE; an ensemble that wins on validation (made to here) is the final
    model, each member refitted on train+val for its own epochs, like the single model would be."""
    import cotune
    from cotune import pipeline
    real = pipeline.evaluate_ensemble

    def winning(cfg, dirs):  # the candidate's real metrics, but a validation RMSE no trial can beat
        out = real(cfg, dirs)
        return {**out, "val": {**out["val"], "rmse": 0.0}} if "val" in out else out

    monkeypatch.setattr(pipeline, "evaluate_ensemble", winning)
    res = _fit(tmp_path / "s", "sklearn:diabetes", "search.top_k=2", trials=3)
    state = json.loads((tmp_path / "s" / "fit.json").read_text())
    assert state["metric"] == {"name": "rmse", "maximize": False}
    assert state["ensemble"]["kept"] and state["ensemble"]["metric"] == "rmse"
    how = state["final"]
    assert how == res.how and how["kind"] == "ensemble" and how["trained_on"] == "train+val"
    assert how["trials"] == state["ensemble"]["members"] and len(how["epochs"]) == 2
    for i, n in enumerate(how["trials"]):
        member = tmp_path / "s" / "final" / "members" / str(i)
        trial = tmp_path / "s" / "trials" / f"{n:05d}"
        rows, trial_rows = (json.loads((d / "env.json").read_text())["rows"] for d in (member, trial))
        assert rows["val"] == 0 and rows["train_split"] == trial_rows["train_split"] + trial_rows["val"]
        assert json.loads((member / "metrics.json").read_text())["train"]["epochs_run"] == how["epochs"][i]
    final = json.loads((tmp_path / "s" / "final" / "metrics.json").read_text())
    assert set(final) == {"test", "ensemble"} and final["test"]["rmse"] > 0
    assert cotune.load(tmp_path / "s" / "final").predict("sklearn:diabetes").shape == (442,)
    assert res.final.n_params > 0
    from cotune import cli
    with cli.out_console.capture() as shown:
        cli.print_metrics(res.final, res.how)
    assert "ensemble of trials" in shown.get() and "best epoch 0/0" not in shown.get()


def test_an_ensemble_without_time_to_refit_keeps_its_trained_members(tmp_path, monkeypatch):
    """When the budget's remainder cannot cover the members' refits, they stay as the search trained them."""
    from cotune.search import ensemble
    study = _done_study(tmp_path, "maximize", [0.9, 0.8], "accuracy")
    choice = {"members": [0, 1], "val": 0.95, "best_single_val": 0.9, "metric": "accuracy", "kept": True,
              "trials": study.trials, "metrics": {"val": {"accuracy": 0.95}, "test": {"accuracy": 0.9}}}
    copied = []
    monkeypatch.setattr("cotune.bundle.save_ensemble", lambda out, dirs: copied.extend(dirs))
    monkeypatch.setattr(ensemble, "read_json", lambda p: {"n_params": 5})
    (tmp_path / "out" / "final" / "members" / "0").mkdir(parents=True)
    final, how = ensemble.final_model(from_dict({}), study.trials[0], choice, tmp_path / "out", deadline=0.0)
    assert how["kind"] == "ensemble" and how["trained_on"] == "train" and "budget" in how["summary"]
    assert copied == [t.user_attrs["run_dir"] for t in study.trials] and final.test == {"accuracy": 0.9}


def test_an_ensemble_refits_the_members_the_budget_covers_best_first(tmp_path, monkeypatch):
    """With time for one member's refit of two, the best member is refitted on train + validation and the other
    stays as the search trained it; the test score is the mixed ensemble's."""
    import time
    from types import SimpleNamespace

    from cotune import launch, pipeline
    from cotune.search import ensemble
    study = _done_study(tmp_path, "maximize", [0.9, 0.8], "accuracy")
    trials = study.trials
    trials[1].user_attrs["seconds"] = 1e6  # trial 1's refit would take far longer than the budget's remainder
    choice = {"members": [0, 1], "val": 0.95, "best_single_val": 0.9, "metric": "accuracy", "kept": True,
              "trials": trials, "metrics": {"val": {"accuracy": 0.95}, "test": {"accuracy": 0.9}}}
    trained, saved = [], []
    done = SimpleNamespace(train=SimpleNamespace(stopped_early=True, epochs_run=2))  # its refit ended by the budget
    monkeypatch.setattr(launch, "run", lambda cfg, **kw: trained.append(cfg.out) or done)
    monkeypatch.setattr("cotune.bundle.save_ensemble", lambda out, dirs: saved.extend(map(str, dirs)))
    monkeypatch.setattr(pipeline, "evaluate_ensemble", lambda cfg, dirs: {"val": {"accuracy": 1.0}, "test": {"accuracy": 0.93}})
    monkeypatch.setattr(ensemble, "read_json", lambda p: {"n_params": 5})
    (tmp_path / "out" / "final" / "members" / "0").mkdir(parents=True)
    final, how = ensemble.final_model(from_dict({}), trials[0], choice, tmp_path / "out", deadline=time.time() + 3600)
    member0 = str(tmp_path / "out" / "final" / "members" / "0")
    assert trained == [member0] and saved == [member0, trials[1].user_attrs["run_dir"]]
    assert how["trained_on"] == "mixed" and how["refitted"] == [0] and "#1 as the search trained it" in how["summary"]
    assert how["budget_ended_at"] == {"0": 2} and "the budget ended the refit of #0 after epoch 2" in how["summary"]
    assert final.test == {"accuracy": 0.93} and "val" not in final.metrics  # the refitted member trained on val


def test_the_final_refit_ends_when_the_budget_does(tmp_path):
    """A refit slower than its estimate (a loaded machine) stops after the epoch that ends past the deadline, less
    the work after it; fit.json's 'final' says so. Without a deadline it trains its full epoch count."""
    import time
    from types import SimpleNamespace

    from cotune.search import ensemble
    best = SimpleNamespace(number=0, params={}, user_attrs={"best_epoch": 40})
    cfg = from_dict({}, ["data.source=sklearn:iris", "runtime.threads=1"])
    final, how = ensemble.final_model(cfg, best, None, tmp_path / "late", deadline=time.time())
    assert final.train.epochs_run == 1 and how["budget_ended_at"] == {"0": 1} and "the budget ended it after epoch 1" in how["summary"]
    assert how["epochs"] == [40] and (tmp_path / "late" / "final" / "model.safetensors").is_file()
    final, how = ensemble.final_model(cfg, best, None, tmp_path / "free", deadline=None)
    assert final.train.epochs_run == 40 and "budget_ended_at" not in how and "budget" not in how["summary"]


def test_two_objectives_search_the_pareto_front(tmp_path):
    """quality,size: NSGA-II over (val accuracy, parameters); the final model is the front's best accuracy;
    no ensemble. quality,latency: the second objective is measured CPU milliseconds per sample."""
    res = _fit(tmp_path / "size", "sklearn:iris", "search.sampler=tpe", trials=4, objective="quality,size")
    study = optuna.load_study(study_name="size", storage=f"sqlite:///{tmp_path / 'size' / 'study.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    base = from_dict(study.user_attrs["config"])
    assert type(_sampler(base, study.user_attrs["space"])).__name__ == "NSGAIISampler"  # what the workers ran
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert done and all(t.values[1] == t.user_attrs["n_params"] for t in done)
    front_best = max(t.values[0] for t in study.best_trials)
    state = json.loads((tmp_path / "size" / "fit.json").read_text())
    assert state["best"]["values"][0] == front_best and state["best"]["number"] in {t.number for t in study.best_trials}
    assert state["ensemble"] is None and state["final"]["kind"] == "single" and res.how["trials"] == [state["best"]["number"]]
    assert [r for r in (tmp_path / "size" / "trials.csv").read_text().splitlines()[0].split(",") if r == "second_objective"]
    _fit(tmp_path / "lat", "sklearn:iris", trials=2, objective="quality,latency")
    lat = optuna.load_study(study_name="lat", storage=f"sqlite:///{tmp_path / 'lat' / 'study.db'}")
    assert all(0 < t.values[1] < 1000 for t in lat.trials if t.state.name == "COMPLETE")
