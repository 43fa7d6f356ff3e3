"""cotune's model as an MLflow pyfunc model (cotune.mlflow_model): `cotune train --mlflow URI` logs it into its run,
a fresh Python process loads it with mlflow.pyfunc.load_model and predicts what `cotune predict` writes.

The fresh process starts first and imports mlflow and torch while this one creates the SQLite store (seconds: its
tables) and trains; it loads the model once the run's mlflow.json names it. `cotune fit`'s model is checked with the
rest of its MLflow run in tests/test_track.py.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

mlflow = pytest.importorskip("mlflow", reason="MLflow models need mlflow: pip install -e '.[track]'")

from mlflow.entities import LoggedModelStatus  # noqa: E402

import cotune  # noqa: E402
from cotune.cli import app  # noqa: E402
from cotune.errors import ConfigError  # noqa: E402
from cotune.mlflow_model import log_model, save_model  # noqa: E402

ENV = {"OMP_NUM_THREADS": "1", "COLUMNS": "250"}
PKG = Path(cotune.__file__).parent

# the fresh process: the slow imports first (mlflow, torch), then, once `go` exists, load the model by its runs:/ URI
# and predict
LOADER = r"""
import json, sys, time
from pathlib import Path
import mlflow.pyfunc, pandas, cotune.bundle  # noqa: F401  (torch, cotune's models)
go, t0 = Path(sys.argv[1]), time.time()
while not go.exists():
    if time.time() - t0 > 240:
        sys.exit("no model to load")
    time.sleep(0.05)
job = json.loads(go.read_text())
mlflow.set_tracking_uri(job["tracking_uri"])
model = mlflow.pyfunc.load_model(job["model_uri"])
model.predict(pandas.read_csv(job["data"])).to_csv(job["out"], index=False)
print(json.dumps({"python_model": type(model.unwrap_python_model()).__name__,
                  "inputs": [c["name"] for c in model.metadata.get_input_schema().to_dict()]}))
"""


def cli(*args):
    r = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    return r.exit_code, r.stdout, r.stderr


def ok(res):
    code, out, err = res
    assert code == 0, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    return out


def one_line_error(res) -> str:
    code, out, err = res
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and "Traceback" not in out + err, out + err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def write_table(path, n=120, seed=0):
    """Numbers, a category and an integer column, a 3-class string label; a few missing values."""
    g = np.random.default_rng(seed)
    x1, x2 = g.normal(size=n).round(3), g.normal(size=n).round(3)
    color = g.choice(["red", "green", "blue"], n).astype(object)
    label = np.where(x1 + (color == "red") > 0.5, "high", np.where(x2 > 0, "mid", "low"))
    df = pd.DataFrame({"x1": x1, "x2": x2, "color": color, "size": g.integers(1, 5, n), "label": label})
    df.loc[[3, 17], "x1"] = np.nan
    df.loc[[8], "color"] = np.nan
    df.to_csv(path, index=False)
    return df


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A tiny table trained through the CLI with --mlflow; the fresh loader process started before it."""
    d = tmp_path_factory.mktemp("mlflow")
    go = d / "go.json"
    loader = subprocess.Popen([sys.executable, "-c", LOADER, str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, **ENV, "PYTHONWARNINGS": "ignore"})
    try:
        df = write_table(d / "table.csv")
        new = df.drop(columns="label").head(20)
        new.loc[5, "size"] = np.nan  # an integer column with a missing value reads as float
        new.to_csv(d / "new.csv", index=False)
        uri = f"sqlite:///{d / 'store' / 'mlflow.db'}"
        (d / "store").mkdir()
        run = d / "run"
        out = ok(cli("train", "--set", f"data.source={d / 'table.csv'}", "--set", "data.target=label",
                     "--set", "train.epochs=2", "--set", "model.width=8", "--out", run, "-q", "--mlflow", uri))
        info = json.loads((run / "mlflow.json").read_text())
        go.write_text(json.dumps({**info, "data": str(d / "new.csv"), "out": str(d / "pyfunc.csv")}))
        yield {"dir": d, "run": run, "uri": uri, "info": info, "stdout": out, "loader": loader}
    finally:
        if loader.poll() is None:
            loader.kill()
            loader.communicate()


def test_a_fresh_process_loads_the_logged_model_and_predicts_like_cotune_predict(logged):
    d = logged["dir"]
    ok(cli("predict", logged["run"], d / "new.csv", "--out", d / "cli.csv"))
    out, err = logged["loader"].communicate(timeout=240)
    assert logged["loader"].returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report == {"python_model": "CotuneModel", "inputs": ["x1", "x2", "color", "size"]}
    pyfunc, by_cli = pd.read_csv(d / "pyfunc.csv"), pd.read_csv(d / "cli.csv")
    assert list(by_cli.columns) == ["prediction", "proba_high", "proba_low", "proba_mid"] and len(by_cli) == 20
    pd.testing.assert_frame_equal(pyfunc, by_cli)
    assert (d / "pyfunc.csv").read_bytes() == (d / "cli.csv").read_bytes()  # what `cotune predict` writes, byte for byte


def test_the_run_holds_params_metrics_and_the_model_with_signature_and_example(logged):
    info, run = logged["info"], logged["run"]
    assert f"MLflow model: {info['model_uri']}" in logged["stdout"]
    assert info["model_uri"] == f"runs:/{info['run_id']}/model" and info["tracking_uri"] == logged["uri"]
    client = mlflow.tracking.MlflowClient(logged["uri"])
    r = client.get_run(info["run_id"])
    assert r.info.status == "FINISHED" and r.info.run_name == "run" and r.data.params["data.target"] == "label"
    metrics = json.loads((run / "metrics.json").read_text())
    assert r.data.metrics["final/test_accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] == [1, 2]
    assert [o.model_id for o in r.outputs.model_outputs] == [info["model_id"]]
    model = client.get_logged_model(info["model_id"])
    assert model.name == "model" and model.source_run_id == r.info.run_id and model.status == LoggedModelStatus.READY
    local = Path(info["artifact_uri"].removeprefix("file://"))  # the store keeps artifacts beside mlflow.db
    assert local.is_relative_to(Path(logged["uri"].removeprefix("sqlite:///")).parent / "mlartifacts")
    assert (local / "artifacts" / "bundle" / "model.safetensors").is_file() and not list(local.rglob("*.pkl"))
    assert not (local / "artifacts" / "bundle" / "metrics.jsonl").exists()  # the bundle's files, not the run's log
    reqs = (local / "requirements.txt").read_text().split()
    assert [q.split("==")[0] for q in reqs][:3] == ["cotune", "torch", "numpy"] and any("mlflow" in q for q in reqs)
    meta = mlflow.models.Model.load(str(local))
    assert [(c.name, c.required) for c in meta.signature.inputs.inputs] == [(c, False) for c in ("x1", "x2", "color", "size")]
    assert {c.name for c in meta.signature.outputs.inputs} == {"prediction", "proba_high", "proba_low", "proba_mid"}
    example = meta.load_input_example(str(local))
    assert list(example.columns) == ["x1", "x2", "color", "size"] and len(example) == 5


def test_save_model_and_log_model_through_the_api(logged, tmp_path):
    run, df = logged["run"], pd.read_csv(logged["dir"] / "new.csv")
    expected = cotune.load(run).predict_frame(df)
    path = save_model(run, tmp_path / "exported", data=df)
    assert (path / "MLmodel").is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    pd.testing.assert_frame_equal(mlflow.pyfunc.load_model(str(path)).predict(df), expected)
    with pytest.raises(ConfigError, match="exists already"):
        save_model(run, path)
    client = mlflow.tracking.MlflowClient(logged["uri"])
    other = client.create_run(client.get_experiment_by_name("cotune").experiment_id, run_name="by-hand")
    info = log_model(run, tracking_uri=logged["uri"], run_id=other.info.run_id)  # data: the run's own training table
    assert info["model_uri"] == f"runs:/{other.info.run_id}/model"
    pd.testing.assert_frame_equal(mlflow.pyfunc.load_model(info["artifact_uri"]).predict(df), expected)
    with pytest.raises(ConfigError, match="Cannot open MLflow run"):
        log_model(run, tracking_uri=logged["uri"], run_id="0" * 32)


def test_api_train_logs_an_array_model_that_takes_float32_samples(logged, tmp_path):
    g = np.random.default_rng(1)
    X, y = g.normal(size=(90, 2, 6)).astype(np.float32), g.integers(0, 2, 90)
    np.savez(tmp_path / "arrays.npz", X=X, y=y)
    res = cotune.train(overrides=[f"data.source={tmp_path / 'arrays.npz'}", "train.epochs=1", "model.width=8",
                                  "runtime.progress=false"], out=tmp_path / "arrays", mlflow=logged["uri"])
    model = mlflow.pyfunc.load_model(res.mlflow["artifact_uri"])
    assert model.metadata.get_input_schema().inputs[0].shape == (-1, 2, 6)
    expected = cotune.load(res.path).predict_frame(X[:7])  # integer labels: an object column there, int64 here
    pd.testing.assert_frame_equal(model.predict(X[:7]), expected, check_dtype=False)


def test_a_bad_tracking_uri_is_one_line_and_trains_nothing(tmp_path):
    line = one_line_error(cli("train", "--set", "data.source=sklearn:iris", "--out", tmp_path / "r", "-q",
                              "--mlflow", "nosuch://store"))
    assert "nosuch://store" in line and "drop --mlflow" in line and not (tmp_path / "r").exists()


def test_without_mlflow_one_line_says_how_to_install_it(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "mlflow"]:  # `import mlflow...` now raises ImportError,
        monkeypatch.setitem(sys.modules, name, None)                     # as when it is not installed
    line = one_line_error(cli("train", "--set", "data.source=sklearn:iris", "--out", tmp_path / "r", "-q",
                              "--mlflow", f"sqlite:///{tmp_path / 'new.db'}"))
    assert "pip install 'cotune[track]'" in line and not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match=r"pip install 'cotune\[track\]'"):
        save_model(tmp_path / "r", tmp_path / "m")


def test_cotune_imports_mlflow_only_when_asked():
    """No module imports mlflow at its top but cotune/pyfunc.py, the file only MLflow runs."""
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        top = [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
        top += [n.module or "" for n in tree.body if isinstance(n, ast.ImportFrom)]
        uses = [m for m in top if m.split(".")[0] == "mlflow"]
        assert not uses or path.name == "pyfunc.py", (path, uses)
