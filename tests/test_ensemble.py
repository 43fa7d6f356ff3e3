import numpy as np
import pytest
import torch

import cotune
from cotune.bundle import Ensemble, save_ensemble
from cotune.errors import BundleError
from cotune.data.split import split_indices
from cotune.evaluate import evaluate
from cotune.pipeline import evaluate_ensemble, load_data


def test_soft_voting_ensemble_round_trip(tmp_path):
    cfg = {"data": {"source": "sklearn:wine"}, "model": {"family": "mlp", "width": 16, "depth": 1},
           "train": {"epochs": 3}, "runtime": {"progress": False}}
    runs = [cotune.train({**cfg, "runtime": {"seed": s, "progress": False}}, out=tmp_path / f"m{s}") for s in range(3)]
    save_ensemble(tmp_path / "ens", [r.path for r in runs])
    ens = cotune.load(tmp_path / "ens")
    assert isinstance(ens, Ensemble) and len(ens.members) == 3
    assert_no_single_model(ens, 3)
    members = [cotune.load(r.path) for r in runs]
    proba = ens.predict_proba("sklearn:wine")
    expected = np.mean([m.predict_proba("sklearn:wine") for m in members], axis=0)
    np.testing.assert_allclose(proba, expected, rtol=1e-6)
    assert proba.shape[1] == 3 and np.allclose(proba.sum(1), 1, atol=1e-5)
    labels = ens.predict("sklearn:wine")
    np.testing.assert_array_equal(labels, np.asarray(ens.classes_, dtype=object)[expected.argmax(1)])
    frame = ens.predict_frame("sklearn:wine")
    assert list(frame.columns)[:2] == ["prediction", "proba_0"] and len(frame) == 178
    metrics = evaluate_ensemble(runs[0].config, [r.path for r in runs])
    assert set(metrics) == {"val", "test"} and 0 <= metrics["test"]["accuracy"] <= 1
    assert metrics["test"]["log_loss"] == pytest.approx(voted(runs, "test")["log_loss"], rel=1e-6)


def voted(runs, part: str) -> dict:
    """Metrics of the members' averaged predictions on one part of the first run's split."""
    cfg = runs[0].config
    ds = load_data(cfg)
    _, va, te = split_indices(ds, val=cfg.data.split.val, test=cfg.data.split.test, seed=cfg.data.split.seed)
    idx = {"val": va, "test": te}[part]
    members = [cotune.load(r.path) for r in runs]
    how = "predict" if ds.task == "regression" else "predict_proba"
    return evaluate(ds.y[idx], np.mean([getattr(m, how)(ds.X.iloc[idx]) for m in members], axis=0), ds.task)


def assert_no_single_model(ens, n):
    """An ensemble's `.model` is an error naming its members, never one member's model in disguise."""
    with pytest.raises(BundleError) as e:
        ens.model
    msg = str(e.value)
    assert "\n" not in msg and f"{n} member models" in msg and ".members[i].model" in msg
    assert all(isinstance(m.model, torch.nn.Module) for m in ens.members)
    assert ens.spec == ens.members[0].spec and ens.task == ens.members[0].task


def test_regression_ensemble_averages_values(tmp_path):
    cfg = {"data": {"source": "sklearn:diabetes"}, "model": {"family": "mlp", "width": 16, "depth": 1},
           "train": {"epochs": 3}, "runtime": {"progress": False}}
    runs = [cotune.train({**cfg, "runtime": {"seed": s, "progress": False}}, out=tmp_path / f"r{s}") for s in range(2)]
    save_ensemble(tmp_path / "ens", [r.path for r in runs])
    ens = cotune.load(tmp_path / "ens")
    assert_no_single_model(ens, 2)
    pred = ens.predict("sklearn:diabetes")
    expected = np.mean([cotune.load(r.path).predict("sklearn:diabetes") for r in runs], axis=0)
    np.testing.assert_allclose(pred, expected, rtol=1e-5)
    metrics = evaluate_ensemble(runs[0].config, [r.path for r in runs])
    assert metrics["val"]["rmse"] == pytest.approx(voted(runs, "val")["rmse"], rel=1e-6)


def test_ensemble_metrics_without_a_test_part(tmp_path):
    """data.split.test=0 (the caller keeps its own test rows): the ensemble is scored on validation only."""
    cfg = {"data": {"source": "sklearn:wine", "split": {"test": 0.0}}, "model": {"family": "mlp", "width": 8, "depth": 1},
           "train": {"epochs": 2}, "runtime": {"progress": False}}
    runs = [cotune.train({**cfg, "runtime": {"seed": s, "progress": False}}, out=tmp_path / f"m{s}") for s in range(2)]
    metrics = evaluate_ensemble(runs[0].config, [r.path for r in runs])
    assert set(metrics) == {"val"} and 0 <= metrics["val"]["accuracy"] <= 1
