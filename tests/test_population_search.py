"""Populations in the search: run_many's runs against solo run(), the worker's ask/train/tell of K trials sharing
their shape knobs, synchronous halving, a failing member, search.population's parsing and the CLI end to end."""
from __future__ import annotations

import csv
import json
import math

import optuna
import pytest
from typer.testing import CliRunner

from cotune import bundle
from cotune.cli import app
from cotune.config import from_dict
from cotune.errors import ConfigError
from cotune.evaluate import Metric
from cotune.pipeline import load_data, run, run_many
from cotune.search.population.search import SHAPE_KNOBS, Heartbeat, halving, probe_size, trainer
from cotune.search.space import parse_population, search_space
from cotune.search.storage import open_study, storage_url
from cotune.search.worker import work
from cotune.runtime import Runtime
from cotune.train import TrainingError

optuna.logging.set_verbosity(optuna.logging.WARNING)
BASE = {"data": {"source": "mnist1d", "n_samples": 600}, "model": {"family": "mlp", "width": 16, "depth": 1, "dropout": 0.0},
        "train": {"epochs": 3, "batch_size": 64}, "runtime": {"threads": 1, "progress": False}, "search": {"mlflow": "none"}}


def cfg_at(tmp_path, name, **dotted):
    return from_dict(BASE).replace(**{"out": str(tmp_path / name), **dotted})


def test_run_many_writes_each_run_as_run_does(tmp_path):
    """Two members, dropout and augmentation off: each run directory and metric as its solo run()'s (float32)."""
    a = cfg_at(tmp_path, "a", **{"train.lr": 3e-3})
    b = cfg_at(tmp_path, "b", **{"train.lr": 1e-2, "data.balance": "class_weights"})
    outs = run_many([a, b], trainer())
    solo = [run(c.replace(out=str(tmp_path / f"solo-{c.out[-1]}")), checkpoint=False) for c in (a, b)]
    for res, ref in zip(outs, solo):
        assert not isinstance(res, BaseException), res
        for r1, r2 in zip(res.train.history, ref.train.history):
            assert r1["train_loss"] == pytest.approx(r2["train_loss"], rel=1e-4, abs=1e-5)
        assert res.metrics["val"]["accuracy"] == pytest.approx(ref.metrics["val"]["accuracy"], abs=1e-9)
        files = {p.name for p in res.path.iterdir()}
        assert files == {p.name for p in ref.path.iterdir()}
        bundle.load(res.path)  # the saved model loads


def test_a_member_whose_loss_turns_nan_fails_alone_and_leaves_no_directory(tmp_path):
    """Regression (diabetes), one member on SGD with lr 10 and momentum 0.99: its loss overflows in the first epoch
    (a TrainingError, as train() raises, and no run directory); the other member finishes and is written."""
    base = {**BASE, "data": {"source": "sklearn:diabetes"}}
    good = from_dict(base).replace(out=str(tmp_path / "good"))
    bad = from_dict(base).replace(**{"out": str(tmp_path / "bad"), "train.optimizer": "sgd", "train.momentum": 0.99,
                                     "train.lr": 10.0, "train.schedule": "constant"})
    outs = run_many([good, bad], trainer())
    assert not isinstance(outs[0], BaseException) and (tmp_path / "good" / "metrics.json").is_file()
    assert outs[0].metrics["val"]["rmse"] < 200
    assert isinstance(outs[1], TrainingError) and "diverged" in str(outs[1])
    assert not (tmp_path / "bad").exists()


def test_a_bad_config_in_run_many_is_its_error_and_writes_nothing(tmp_path):
    ok = cfg_at(tmp_path, "ok")
    bad = cfg_at(tmp_path, "bad", **{"train.loss": "mse"})  # mse on a classification task
    outs = run_many([ok, bad], trainer())
    assert isinstance(outs[1], ConfigError) and not (tmp_path / "bad").exists()
    assert not isinstance(outs[0], BaseException)


def test_halving_keeps_the_best_third_at_its_rungs():
    cull = halving(2, 3, "val_accuracy", Metric("accuracy", True).better)
    rows = {k: {"val_accuracy": v} for k, v in enumerate([0.1, 0.9, 0.5, 0.7, 0.3, 0.8])}
    assert cull(1, rows) == {} and cull(3, rows) == {}  # rungs are 2, 6, 18, ...
    gone = cull(2, rows)
    assert set(gone) == {0, 2, 3, 4} and all(isinstance(e, optuna.TrialPruned) for e in gone.values())
    assert cull(6, {0: {"val_accuracy": 0.2}}) == {}  # one member left: it stays
    low = halving(1, 3, "val_rmse", Metric("rmse", False).better)(1, {0: {"val_rmse": 3.0}, 1: {"val_rmse": 1.0}})
    assert set(low) == {0}


@pytest.mark.parametrize("text,value", [("1", 1), ("16", 16), (" auto ", "auto"), ("AUTO", "auto")])
def test_parse_population(text, value):
    assert parse_population(text) == value


@pytest.mark.parametrize("text", ["0", "-2", "many", "1.5", "2000"])
def test_parse_population_rejects(text):
    with pytest.raises(ConfigError, match="search.population"):
        parse_population(text)


@pytest.mark.parametrize("model", [{}, {"ensemble": 2}, {"family": "cnn1d", "width": 8, "depth": 2}],
                         ids=["mlp", "mlp-ensemble", "cnn1d"])
def test_probe_size_stays_in_the_room_it_is_given(model):
    """Every shape the search stacks is probed, the mlp's in-model ensemble (a (K, B, e, C) output) included."""
    from cotune.search.population.search import _PROBES
    cfg = from_dict({**BASE, "model": {**BASE["model"], **model}})
    rt = Runtime.resolve("cpu", "fp32", 1, False)
    k, solo = probe_size(cfg, ((40,), 10), "multiclass", rt, 4, None, 500)
    assert 1 <= k <= 4 and solo > 0
    assert any(pops for _, pops in _PROBES.values())  # a population step was timed, not only the solo one
    assert probe_size(cfg, ((40,), 10), "multiclass", rt, 1, None, 500)[0] == 1


def test_a_failing_probe_runs_the_trial_alone_and_the_worker_goes_on(tmp_path, monkeypatch, capsys):
    from cotune.search.population import search as population

    def broken(*a, **k):
        raise ValueError("too many values to unpack")
    monkeypatch.setattr(population, "probe_size", broken)
    cfg = from_dict({**BASE, "search": {"trials": 3, "mlflow": "none", "population": "auto"}})
    url = storage_url(tmp_path, None)
    study, cfg, space = open_study(url, "p", cfg, {"train.lr": (1e-3, 1e-2)})
    assert work(url, "p", out=str(tmp_path)) == 3
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert not any(t.user_attrs.get("population_size") for t in trials)  # each ran alone
    assert "runs alone: its population probe failed (ValueError" in capsys.readouterr().err


def test_heartbeat_records_every_member_until_it_ends():
    """Trials asked outside Study.optimize get the storage's heartbeat (else other workers retry them as dead)."""
    import time
    from types import SimpleNamespace
    beats = []
    storage = SimpleNamespace(get_heartbeat_interval=lambda: 0.01, record_heartbeat=beats.append)
    with Heartbeat(SimpleNamespace(_storage=storage), [SimpleNamespace(_trial_id=7)]) as beat:
        beat.add(SimpleNamespace(_trial_id=9))
        time.sleep(0.1)
    n = len(beats)
    assert beats.count(7) >= 2 and beats.count(9) >= 2
    time.sleep(0.05)
    assert len(beats) == n  # stopped with the block
    quiet = SimpleNamespace(get_heartbeat_interval=lambda: None, record_heartbeat=beats.append)
    with Heartbeat(SimpleNamespace(_storage=quiet), [SimpleNamespace(_trial_id=1)]) as beat:
        assert beat.thread is None  # no heartbeat configured: nothing runs


def test_a_worker_trains_populations_that_share_their_shape_knobs(tmp_path):
    cfg = from_dict({**BASE, "search": {"trials": 6, "mlflow": "none", "population": "3"},
                     "model": {"dropout": 0.0}})
    ds = load_data(cfg)
    space = {k: v for k, v in search_space(cfg, set(), ds.modality, ds.task).items() if k != "model.ensemble"}
    space["model.family"] = ("mlp",)
    url = storage_url(tmp_path, None)
    study, cfg, space = open_study(url, "w", cfg, space)
    assert work(url, "w", out=str(tmp_path)) == 6
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    groups: dict = {}
    for t in trials:
        groups.setdefault(t.user_attrs["population"], []).append(t)
    assert sorted(len(g) for g in groups.values()) == [3, 3]
    for members in groups.values():
        shapes = [{k: v for k, v in t.params.items() if k in SHAPE_KNOBS} for t in members]
        assert all(s == shapes[0] for s in shapes)
        assert len({t.params["train.lr"] for t in members}) == 3  # the rest is each member's own
    for t in trials:
        assert t.user_attrs["seconds"] > 0 and t.user_attrs["population_size"] == 3
        if t.state.name == "COMPLETE":
            d = tmp_path / "trials" / f"{t.number:05d}"
            assert t.value == pytest.approx(json.loads((d / "metrics.json").read_text())["val"]["accuracy"])
            assert t.user_attrs["train_seconds"] > 0 and math.isfinite(t.user_attrs["val_loss"])
        else:
            assert t.intermediate_values  # its epochs were reported before the halving stopped it


def test_cli_fit_with_a_population_end_to_end(tmp_path):
    out = tmp_path / "s"
    r = CliRunner().invoke(app, ["fit", "mnist1d", "--trials", "4", "--out", str(out), "--no-report", "-q",
                                 "--set", "data.n_samples=600", "--set", "train.epochs=3", "--set", "search.mlflow=none",
                                 "--set", "search.population=2", "--set", "model.family=mlp", "--set", "model.ensemble=1",
                                 "--set", "search.reeval=0", "--set", "search.top_k=1"],
                           env={"OMP_NUM_THREADS": "1"})
    assert r.exit_code == 0, r.stdout + r.stderr
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 4 and {row["population"] for row in rows} != {""}
    assert (out / "final" / "metrics.json").is_file()


def test_cli_rejects_a_bad_population_in_one_line(tmp_path):
    out = tmp_path / "s"
    r = CliRunner().invoke(app, ["fit", "mnist1d", "--trials", "2", "--out", str(out), "--set", "search.population=lots"],
                           env={"OMP_NUM_THREADS": "1"})
    assert r.exit_code == 2 and "search.population" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


PG_URL = __import__("os").environ.get("COTUNE_TEST_PG_URL")


@pytest.mark.skipif(not PG_URL, reason="COTUNE_TEST_PG_URL is not set: run `bash scripts/postgres.sh start`")
def test_a_worker_trains_populations_on_postgres(tmp_path):
    """No ask lock there: the K asks, the enqueued shape trials and the heartbeat go through PostgreSQL."""
    import uuid
    cfg = from_dict({**BASE, "search": {"trials": 4, "mlflow": "none", "population": "2"}, "model": {"family": "mlp"}})
    ds = load_data(cfg)
    space = {k: v for k, v in search_space(cfg, {"model.family"}, ds.modality, ds.task).items() if k != "model.ensemble"}
    name = f"pop-{uuid.uuid4().hex[:10]}"
    study, _, _ = open_study(PG_URL, name, cfg, space)
    assert work(PG_URL, name, out=str(tmp_path)) == 4
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert sorted(t.user_attrs["population"] for t in trials) == [0, 0, 2, 2]
