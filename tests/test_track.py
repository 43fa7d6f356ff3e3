"""MLflow tracking of a search: a parent run per `cotune fit`, a nested run per trial, in <out>/mlflow.db.

The end-to-end tests run the real `cotune fit` (parent and worker processes) and read the store back
with MlflowClient; pruned and failed trials are forced in-process, where the pruner can be swapped.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow", reason="MLflow tracking needs mlflow: pip install -e '.[track]'")
optuna = pytest.importorskip("optuna")

import mlflow.pyfunc  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

import cotune  # noqa: E402
from cotune.config import RunConfig, from_dict  # noqa: E402
from cotune.search.objective import Objective  # noqa: E402
from cotune.search.storage import open_study, storage_url  # noqa: E402
from cotune.search.tracking import mlflow_uri, track_study  # noqa: E402
from cotune.track import MLFLOW_DB, MlflowTracker, NullTracker, Tee  # noqa: E402

ENV = {"OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONWARNINGS": "ignore"}
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
N_KNOBS = len(RunConfig().flat())


def cotune_fit(out, trials, *args):
    """The real command in a subprocess (its workers are processes too); returns the Popen."""
    cmd = [sys.executable, "-m", "cotune.cli", "fit", "sklearn:iris", "--trials", str(trials), "--set", "train.epochs=2",
           "--set", "model.width=8", "--set", "search.top_k=1", "--out", str(out), "-q", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV})


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Two searches started in the background, tracked (the default) and --mlflow none; the in-process
    tests below run meanwhile (they request this fixture only to start them early)."""
    root = tmp_path_factory.mktemp("fit")
    tracked, untracked = root / "tracked", root / "untracked"
    procs = [cotune_fit(tracked, 3), cotune_fit(untracked, 1, "--mlflow", "none")]
    yield tracked, untracked, procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()


@pytest.fixture(scope="module")
def searches(launched):
    tracked, untracked, procs = launched
    logs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{out}\nstderr:\n{err}"
        logs.append(out + err)
    return tracked, untracked, logs


def runs_of(out):
    client = MlflowClient(tracking_uri=f"sqlite:///{out / MLFLOW_DB}")
    exp = client.get_experiment_by_name(out.name)
    assert exp is not None, [e.name for e in client.search_experiments()]
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def test_pruned_and_failed_trials_get_their_mlflow_status(launched, tmp_path, capsys):
    cfg = from_dict({"data": {"source": "sklearn:iris"}, "model": {"width": 8}, "train": {"epochs": 3},
                     "search": {"trials": 2}})
    space = {"train.lr": (1e-3, 1e-2)}
    study, cfg, space = open_study(storage_url(tmp_path, None), "s", cfg, space)
    parent = track_study(study, cfg, tmp_path)
    assert isinstance(parent, MlflowTracker) and (tmp_path / MLFLOW_DB).is_file()
    study.pruner = optuna.pruners.ThresholdPruner(lower=2.0)  # accuracy < 2: pruned at the first report
    study.optimize(Objective(study, cfg, space, tmp_path, None, 1), n_trials=1, catch=(Exception,))
    bad = cfg.replace(**{"train.loss": "mse"})  # a regression loss on a classification task: the trial fails
    study.optimize(Objective(study, bad, space, tmp_path, None, 1), n_trials=1, catch=(Exception,))
    parent.close("KILLED")
    assert [t.state.name for t in study.trials] == ["PRUNED", "FAIL"]
    client = MlflowClient(tracking_uri=mlflow_uri(None, tmp_path))
    runs = {r.data.tags.get("optuna.trial", "parent"): r for r in client.search_runs([parent.experiment_id])}
    assert runs["parent"].info.status == "KILLED"
    pruned, failed = runs["0"], runs["1"]
    assert pruned.info.status == "KILLED" and pruned.data.tags["pruned"] == "pruned at epoch 1"
    assert len(client.get_metric_history(pruned.info.run_id, "val_accuracy")) == 1
    assert failed.info.status == "FAILED" and "train.loss='mse'" in failed.data.tags["fail_reason"]
    assert failed.data.params["train.loss"] == "mse" and len(failed.data.params) == N_KNOBS  # logged at failure

    capsys.readouterr()
    tracker = MlflowTracker(mlflow_uri(None, tmp_path), experiment="e")
    tracker.client = None  # a tracking error (every call now raises) must never stop training
    Tee(NullTracker(), tracker).log_params({"a": 1})
    tracker.log_metrics({"x": 1.0}, step=1)
    tracker.close()
    assert tracker.broken and capsys.readouterr().err.count("warning: MLflow tracking") == 1


def test_mlflow_none_opens_no_store(launched, tmp_path):
    assert mlflow_uri("none", tmp_path) is None and mlflow_uri(None, tmp_path) == f"sqlite:///{tmp_path}/{MLFLOW_DB}"
    study, cfg, _ = open_study(storage_url(tmp_path, None), "s", from_dict({"search": {"mlflow": "none"}}), {})
    assert isinstance(track_study(study, cfg, tmp_path), NullTracker) and not (tmp_path / MLFLOW_DB).exists()
    assert study.user_attrs["mlflow"] is None


def test_one_parent_run_with_a_nested_run_per_trial(searches):
    out, _, logs = searches
    assert "warning" not in logs[0].lower(), logs[0]
    client, parents, children = runs_of(out)
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.run_name == out.name and parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.data.tags["optuna.trial"] for c in children) == ["0", "1", "2"]
    assert parent.data.params["data.source"] == "sklearn:iris"  # the search's base config


def test_trial_runs_carry_knobs_history_final_metrics_and_state(searches):
    out, _, _ = searches
    client, _, children = runs_of(out)
    study = optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}")
    trials = {str(t.number): t for t in study.trials}
    for run in children:
        t = trials[run.data.tags["optuna.trial"]]
        assert run.info.status == STATUS[t.state.name], (t.number, t.state.name, run.info.status)
        assert len(run.data.params) == N_KNOBS  # every knob of the trial, searched or not
        for knob, value in t.params.items():
            assert run.data.params[knob] == (value if isinstance(value, str) else json.dumps(value)), knob
        if t.state.name == "COMPLETE":
            assert 0 < run.data.metrics["tracking_s"] < 30  # the run's own tracking cost
            for key in ("train_loss", "val_accuracy", "lr"):
                history = client.get_metric_history(run.info.run_id, key)
                assert [m.step for m in history] == list(range(1, t.user_attrs["epochs_run"] + 1)), key
            assert run.data.metrics["final/val_accuracy"] == pytest.approx(t.values[0])
            assert not [k for k in run.data.metrics if k.startswith("final/test")]  # test metrics are the parent's
        if t.state.name == "FAIL":
            assert run.data.tags["fail_reason"] == t.user_attrs["fail_reason"]


def test_parent_run_holds_the_final_model_and_its_test_metrics(searches):
    """final/ is the parent run's pyfunc model (runs:/<run_id>/model, cotune.mlflow_model), stored once."""
    out, _, logs = searches
    client, parents, _ = runs_of(out)
    parent = parents[0]
    fit = json.loads((out / "fit.json").read_text())
    assert parent.data.metrics["final/test_accuracy"] == pytest.approx(fit["test"]["accuracy"])
    assert parent.data.tags["best_trial"] == str(fit["best"]["number"])
    model_uri = f"runs:/{parent.info.run_id}/model"
    assert fit["mlflow"]["model_uri"] == model_uri and f"MLflow model: {model_uri}" in logs[0]
    assert [o.model_id for o in parent.outputs.model_outputs] == [fit["mlflow"]["model_id"]]
    assert (out / "mlartifacts").is_dir()  # the local store keeps artifacts beside mlflow.db
    local = fit["mlflow"]["artifact_uri"].removeprefix("file://")  # the model's files, in mlartifacts/ (runs:/ loads:
    assert local.startswith(str((out / "mlartifacts").resolve()))  # tests/test_mlflow_model.py, in a fresh process)
    metrics = os.path.join(local, "artifacts", "bundle", "metrics.json")
    assert json.loads(open(metrics).read()) == json.loads((out / "final" / "metrics.json").read_text())
    assert not client.list_artifacts(parent.info.run_id)  # the bundle is not logged a second time as plain files
    rows = cotune.load(out).spec.columns
    X = pd.DataFrame(np.random.default_rng(0).normal(5, 1, size=(6, len(rows))), columns=rows)
    pd.testing.assert_frame_equal(mlflow.pyfunc.load_model(fit["mlflow"]["artifact_uri"]).predict(X),
                                  cotune.predict(out, X), check_dtype=False)  # int labels: int64 there, object here


def test_mlflow_none_tracks_nothing(searches):
    _, out, _ = searches
    assert (out / "final" / "metrics.json").is_file()
    assert not (out / MLFLOW_DB).exists() and not (out / "mlartifacts").exists()
    study = optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}")
    assert study.user_attrs["mlflow"] is None
