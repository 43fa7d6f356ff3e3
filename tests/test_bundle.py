"""Bundles through the Python API: save -> cotune.load -> predict, the model.json Spec, outputs -> predictions,
damaged run directories, no pickle anywhere."""
from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import cotune
from cotune import evaluate
from cotune.bundle import Bundle, Spec, predictions
from cotune.data.split import split_indices
from cotune.errors import BundleError, DataError
from cotune.pipeline import load_data

IRIS = {"data": {"source": "sklearn:iris"}, "model": {"family": "mlp", "width": 16, "depth": 1},
        "train": {"epochs": 3, "batch_size": 16, "patience": 0}, "runtime": {"progress": False}}
PICKLE_PROTO = 0x80  # first byte of every pickle since protocol 2 (and of torch.save's legacy format)


def one_line(excinfo, kind):
    assert isinstance(excinfo.value, kind), type(excinfo.value)
    msg = str(excinfo.value)
    assert msg.strip() and "\n" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory):
    return cotune.train(IRIS, out=tmp_path_factory.mktemp("bundle") / "iris")


@pytest.fixture
def damaged(iris_run, tmp_path):
    """A private copy of the finished run to break."""
    return shutil.copytree(iris_run.path, tmp_path / "copy")


def iris_frame():
    return load_data(cotune.RunConfig.model_validate(IRIS)).X


def test_load_returns_a_bundle_that_predicts(iris_run):
    b = cotune.load(iris_run.path)
    assert isinstance(b, Bundle) and b.task == "multiclass" and b.classes_ == [0, 1, 2]
    X = iris_frame()
    proba = b.predict_proba(X)
    assert proba.shape == (150, 3) and np.allclose(proba.sum(1), 1.0, atol=1e-5)
    pred = b.predict(X)
    assert list(pred) == list(np.array([0, 1, 2])[proba.argmax(1)])
    frame = b.predict_frame(X)
    assert list(frame.columns) == ["prediction", "proba_0", "proba_1", "proba_2"]
    np.testing.assert_array_equal(frame[["proba_0", "proba_1", "proba_2"]].to_numpy(), proba)
    # the same rows as an array, or as a table that still holds the target column, give the same answer
    np.testing.assert_array_equal(b.predict_proba(X.to_numpy()), proba)
    np.testing.assert_array_equal(b.predict_proba(X.assign(target=0)), proba)
    assert "iris" in repr(b) and "mlp" in repr(b)


def test_two_loads_and_the_training_evaluation_agree(iris_run):
    """Reloaded weights reproduce, bit for bit, what the pipeline measured on the test split right after training."""
    a, b = cotune.load(iris_run.path), cotune.load(iris_run.path)
    cfg = iris_run.config
    ds = load_data(cfg)
    _, _, te = split_indices(ds, val=cfg.data.split.val, test=cfg.data.split.test, seed=cfg.data.split.seed)
    X = ds.X.iloc[te]
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    again = evaluate.evaluate(ds.y[te], a.predict_proba(X), ds.task, classes=list(ds.classes))
    saved = json.loads((iris_run.path / "metrics.json").read_text())["test"]
    assert again["accuracy"] == saved["accuracy"] == iris_run.test["accuracy"]
    assert again["log_loss"] == pytest.approx(saved["log_loss"], abs=1e-6)


def test_predict_from_a_csv_path(iris_run, tmp_path):
    X = iris_frame()
    X.head(10).to_csv(tmp_path / "new.csv", index=False)
    frame = cotune.load(iris_run.path).predict_frame(tmp_path / "new.csv")
    assert len(frame) == 10
    np.testing.assert_allclose(frame.iloc[:, 1:].to_numpy(), cotune.load(iris_run.path).predict_proba(X.head(10)), atol=1e-6)
    assert cotune.predict(iris_run.path, str(tmp_path / "new.csv"), out=tmp_path / "p.csv").shape == (10, 4)
    assert pd.read_csv(tmp_path / "p.csv").shape == (10, 4)


def test_bad_predict_input_is_a_data_error(iris_run):
    b = cotune.load(iris_run.path)
    with pytest.raises(DataError) as e:
        b.predict(np.zeros((3, 7)))
    assert "shape" in one_line(e, DataError)
    with pytest.raises(DataError) as e:
        b.predict(iris_frame().drop(columns="petal width (cm)"))
    assert "petal width" in one_line(e, DataError)
    with pytest.raises(DataError):
        b.predict([[1.0, 2.0, 3.0, 4.0]])  # a list is not a table


def test_regression_bundle(tmp_path):
    cfg = {"data": {"source": "sklearn:diabetes"}, "model": {"width": 16, "depth": 1},
           "train": {"epochs": 2, "patience": 0}, "runtime": {"progress": False}}
    res = cotune.train(cfg, out=tmp_path / "d")
    b = cotune.load(res.path)
    X = load_data(res.config).X
    pred = b.predict(X)
    assert pred.shape == (442,) and np.isfinite(pred).all()
    assert 50 < pred.mean() < 300  # back in target units, not standardized
    assert list(b.predict_frame(X).columns) == ["prediction"]
    with pytest.raises(BundleError) as e:
        b.predict_proba(X)
    assert "regression" in one_line(e, BundleError)


# model.json as every run so far has written it (an iris run with IRIS's model), keys in file order
OLD_SPEC = {
    "family": "mlp", "in_shape": [4], "out_dim": 3,
    "kwargs": {"width": 16, "depth": 1, "dropout": 0.1, "norm": "none", "activation": "relu", "kernel_size": 5,
               "pool": "auto", "bidirectional": False, "heads": 4},
    "task": "multiclass", "classes": [0, 1, 2], "target": "target", "modality": "tabular",
    "columns": ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"], "raw_shape": [4],
    "y_mean": 0.0, "y_std": 1.0,
    "meta": {"source": "sklearn:iris", "columns": ["sepal length (cm)", "sepal width (cm)", "petal length (cm)",
                                                   "petal width (cm)", "target"],
             "builtin": "sklearn:iris", "class_names": ["setosa", "versicolor", "virginica"]},
    "n_params": 131,
}


def test_spec_round_trips_and_writes_the_model_json_keys(iris_run):
    on_disk = json.loads((iris_run.path / "model.json").read_text())
    b = cotune.load(iris_run.path)
    assert isinstance(b.spec, Spec) and b.spec.in_shape == (4,) and b.spec.n_params == iris_run.n_params
    assert list(b.spec.to_dict()) == list(on_disk) == list(OLD_SPEC)  # the same keys, in the same order
    assert b.spec.to_dict() == on_disk and json.loads(json.dumps(b.spec.to_dict())) == on_disk
    assert Spec.from_dict(b.spec.to_dict()) == b.spec
    assert Spec.from_dict(OLD_SPEC).to_dict() == OLD_SPEC
    assert Spec.from_dict({**OLD_SPEC, "added_later": 1}) == Spec.from_dict(OLD_SPEC)  # a newer file still loads
    with pytest.raises(TypeError):
        Spec.from_dict({k: v for k, v in OLD_SPEC.items() if k != "in_shape"})


def test_a_model_json_written_before_the_spec_loads(iris_run, damaged):
    (damaged / "model.json").write_text(json.dumps(OLD_SPEC, indent=2))
    b = cotune.load(damaged)
    assert b.spec == Spec.from_dict(OLD_SPEC) and b.spec.columns == OLD_SPEC["columns"]
    np.testing.assert_array_equal(b.predict_proba(iris_frame()), cotune.load(iris_run.path).predict_proba(iris_frame()))


def test_predictions_from_outputs():
    out = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-3.0, 5.0, 1.0]])
    clf = Spec.from_dict(OLD_SPEC)
    p = predictions(out, clf)
    assert p.shape == (3, 3) and np.allclose(p.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(p, torch.softmax(out, -1).numpy(), rtol=1e-6)  # numpy's softmax, torch's within an ulp
    np.testing.assert_allclose(p[1], [1 / 3] * 3, rtol=1e-6)
    assert p.dtype == np.float32
    np.testing.assert_array_equal(predictions(out.numpy(), clf), p)  # an array (an ONNX session's) is the same
    huge = predictions(np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32), clf)  # stable: no overflow to nan
    np.testing.assert_allclose(huge, [[1.0, 0.0, 0.0]])
    reg = Spec.from_dict({**OLD_SPEC, "task": "regression", "out_dim": 1, "classes": [], "y_mean": 150.0, "y_std": 10.0})
    v = predictions(torch.tensor([[0.0], [1.0], [-2.5]]), reg)
    assert v.shape == (3,)
    np.testing.assert_allclose(v, [150.0, 160.0, 125.0])


@pytest.mark.parametrize("missing", ["model.safetensors", "model.json", "preprocess.json"])
def test_missing_file_is_a_bundle_error(damaged, missing):
    (damaged / missing).unlink()
    with pytest.raises(BundleError) as e:
        cotune.load(damaged)
    assert missing in one_line(e, BundleError)


@pytest.mark.parametrize("name,content", [
    ("model.json", b'{"family": "mlp", "in_sh'),                       # truncated JSON
    ("model.json", b'{"family": "mlp"}'),                              # valid JSON, keys missing
    ("model.safetensors", b"\x00" * 64),                               # not safetensors
    ("preprocess.json", b"[1, 2"),                                     # truncated JSON
])
def test_corrupted_file_is_a_bundle_error(damaged, name, content):
    (damaged / name).write_bytes(content)
    with pytest.raises(BundleError) as e:
        cotune.load(damaged)
    one_line(e, BundleError)


def test_weights_of_another_shape_are_a_bundle_error(damaged):
    spec = json.loads((damaged / "model.json").read_text())
    spec["kwargs"]["width"] = 32
    (damaged / "model.json").write_text(json.dumps(spec))
    with pytest.raises(BundleError) as e:
        cotune.load(damaged)
    one_line(e, BundleError)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(BundleError) as e:
        cotune.load(tmp_path / "nothing")
    assert "not found" in one_line(e, BundleError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError):
        cotune.load(tmp_path / "empty")


class Kill(Exception):
    pass


def _files(d):
    return [p for p in d.rglob("*") if p.is_file()]


def test_no_pickle_in_finished_or_interrupted_runs(iris_run, tmp_path, monkeypatch):
    def die(epoch, row):
        if epoch == 2:
            raise Kill()

    with pytest.raises(Kill):
        cotune.train(IRIS, out=tmp_path / "cut", on_eval=die)
    assert (tmp_path / "cut" / "checkpoint.safetensors").is_file()
    for f in _files(iris_run.path) + _files(tmp_path / "cut"):
        with open(f, "rb") as fh:
            assert fh.read(1) != bytes([PICKLE_PROTO]), f"{f} looks like a pickle"
        assert f.suffix in (".json", ".jsonl", ".csv", ".safetensors", ".parquet"), f  # parquet: the drift reference

    def forbidden(*a, **k):
        raise AssertionError("unpickling is never needed")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    assert cotune.load(iris_run.path).predict(iris_frame()).shape == (150,)
    assert cotune.train(out=tmp_path / "cut", resume=True).train.epochs_run == 3  # resuming needs no pickle either
