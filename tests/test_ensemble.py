import numpy as np

import cotune
from cotune.bundle import Ensemble, save_ensemble
from cotune.pipeline import evaluate_ensemble


def test_soft_voting_ensemble_round_trip(tmp_path):
    cfg = {"data": {"source": "sklearn:wine"}, "model": {"family": "mlp", "width": 16, "depth": 1},
           "train": {"epochs": 3}, "runtime": {"progress": False}}
    runs = [cotune.train({**cfg, "runtime": {"seed": s, "progress": False}}, out=tmp_path / f"m{s}") for s in range(3)]
    save_ensemble(tmp_path / "ens", [r.path for r in runs])
    ens = cotune.load(tmp_path / "ens")
    assert isinstance(ens, Ensemble) and len(ens.members) == 3
    members = [cotune.load(r.path) for r in runs]
    proba = ens.predict_proba("sklearn:wine")
    expected = np.mean([m.predict_proba("sklearn:wine") for m in members], axis=0)
    np.testing.assert_allclose(proba, expected, rtol=1e-6)
    assert proba.shape[1] == 3 and np.allclose(proba.sum(1), 1, atol=1e-5)
    frame = ens.predict_frame("sklearn:wine")
    assert list(frame.columns)[:2] == ["prediction", "proba_0"] and len(frame) == 178
    metrics = evaluate_ensemble(runs[0].config, [r.path for r in runs])
    assert set(metrics) == {"val", "test"} and 0 <= metrics["test"]["accuracy"] <= 1


def test_regression_ensemble_averages_values(tmp_path):
    cfg = {"data": {"source": "sklearn:diabetes"}, "model": {"family": "mlp", "width": 16, "depth": 1},
           "train": {"epochs": 3}, "runtime": {"progress": False}}
    runs = [cotune.train({**cfg, "runtime": {"seed": s, "progress": False}}, out=tmp_path / f"r{s}") for s in range(2)]
    save_ensemble(tmp_path / "ens", [r.path for r in runs])
    pred = cotune.load(tmp_path / "ens").predict("sklearn:diabetes")
    expected = np.mean([cotune.load(r.path).predict("sklearn:diabetes") for r in runs], axis=0)
    np.testing.assert_allclose(pred, expected, rtol=1e-5)
